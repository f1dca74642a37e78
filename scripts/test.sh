#!/usr/bin/env bash
# Fresh machine -> whole test suite: make .venv, install Waldo with its dev tools, run the tests.
#   scripts/test.sh           the whole suite
#   scripts/test.sh --fast    the fast tier: every package, but no test that trains, starts Ray,
#                             runs containers or a browser, or is slow otherwise (markers in
#                             pyproject.toml)
# Other arguments go to pytest (e.g. `scripts/test.sh --fast tests/unit -x`). Both print the
# 25 slowest tests. The tests run in WALDO_TEST_WORKERS pytest-xdist workers (default 2; 0 runs
# them in this process), a test module at a time, every module that starts Ray on one worker
# (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."

tier=()
if [ "${1:-}" = "--fast" ]; then
  shift
  tier=(-m "not (trains or ray or containers or browser or slow)")
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all,dev]'
# Triton's perf_analyzer for the Open Inference Protocol tests (they skip where it cannot run).
./scripts/perf_analyzer.sh

# The import-linter contracts and the import-cycle check run inside the suite
# (tests/unit/test_import_rules.py), once.
.venv/bin/python -m pytest --durations=25 -n "${WALDO_TEST_WORKERS:-2}" ${tier[@]+"${tier[@]}"} "$@"
