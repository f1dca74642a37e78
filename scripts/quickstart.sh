#!/usr/bin/env bash
# Fresh machine -> trained model: make .venv, install Waldo, run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'

# The main job: train the two-conv CNN on the embedded digits, tracked in ./mlflow.db.
.venv/bin/waldo train --model cnn --data digits
