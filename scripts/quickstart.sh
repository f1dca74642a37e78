#!/usr/bin/env bash
# Fresh machine -> trained model -> a service answering for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${WALDO_PORT:-8000}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# (setuptools' notice on editable installs is a warning of the build, not of Waldo)
PYTHONWARNINGS=ignore .venv/bin/python -m pip install -q -e '.[all]'

# The main job: train the two-conv CNN on the embedded real MNIST digits (mnist-5k, offline),
# tracked in ./mlflow.db, and export the best checkpoint to ONNX in ./models/cnn/<version>/.
.venv/bin/waldo train --model cnn --data mnist-5k --export

# Serve ./models and ask the service about digits it has never seen.
.venv/bin/waldo serve --models ./models --port "$PORT" --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
.venv/bin/python scripts/ask_service.py --url "http://127.0.0.1:$PORT" --model cnn
echo "Serve it again with: .venv/bin/waldo serve --models ./models  (web page: http://127.0.0.1:$PORT/)"
