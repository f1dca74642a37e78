#!/usr/bin/env bash
# Fresh machine -> whole test suite: make .venv, install Waldo with its dev tools, run the tests.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all,dev]'
# Triton's perf_analyzer for the Open Inference Protocol tests (they skip where it cannot run).
./scripts/perf_analyzer.sh

# The import-linter contracts and the import-cycle check run inside the suite
# (tests/unit/test_import_rules.py), once.
.venv/bin/python -m pytest "$@"
