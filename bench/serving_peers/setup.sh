#!/usr/bin/env bash
# Make the serving peers' virtual environments for bench/serving_compare.py (idempotent).
#
#   bench/serving_peers/setup.sh                 # every peer
#   bench/serving_peers/setup.sh triton kserve   # some of them
#
# Peers whose packages conflict with the project's pins (fastapi, pydantic, uvicorn, protobuf,
# grpcio) get their own venv under .bench-venvs/<peer>/, with the same onnxruntime as .venv
# plus numpy, pillow and pydantic (for `serving.processing`, imported from the repo root).
# `pip install --dry-run 'ray[serve]==2.60.0'` in .venv would move protobuf 6 -> 7, so Ray
# Serve gets its own venv too. A venv counts as ready once its marker file names the same
# pins. What cannot be installed is printed with pip's last error line; exit status 0 anyway,
# so the benchmark reports that peer as "not run".
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
BASE_PY="${BENCH_PYTHON:-$(readlink -f .venv/bin/python 2>/dev/null || command -v python3.11 || command -v python3)}"
ORT="onnxruntime==$("$ROOT/.venv/bin/python" -c 'import onnxruntime; print(onnxruntime.__version__)' 2>/dev/null || echo 1.32.0)"
COMMON=("$ORT" numpy pillow pydantic aiohttp)

declare -A PINS=(
  [triton]="nvidia-pytriton==0.7.0"
  [rayserve]="ray[serve]==2.60.0"
  [kserve]="kserve==0.21.0"
  [bentoml]="bentoml==1.4.40"
  [litserve]="litserve==0.2.19"
)
peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(triton rayserve kserve bentoml litserve)

failed=()
for peer in "${peers[@]}"; do
  pin="${PINS[$peer]:-}"
  if [ -z "$pin" ]; then echo "unknown peer '$peer' (known: ${!PINS[*]})"; failed+=("$peer"); continue; fi
  venv="$ROOT/.bench-venvs/$peer"
  want="$pin ${COMMON[*]}"
  if [ -f "$venv/.ready" ] && [ "$(cat "$venv/.ready")" = "$want" ]; then
    echo "$peer: ready ($venv)"; continue
  fi
  start=$(date +%s)
  mkdir -p "$ROOT/.bench-venvs"
  [ -x "$venv/bin/python" ] || "$BASE_PY" -m venv "$venv" || { failed+=("$peer: venv creation failed"); continue; }
  log="$venv/pip.log"
  if "$venv/bin/python" -m pip install -q --disable-pip-version-check "$pin" "${COMMON[@]}" >"$log" 2>&1; then
    echo "$want" >"$venv/.ready"
    echo "$peer: installed $pin in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1) ($venv)"
  else
    why="$(grep -E 'ERROR|error:' "$log" | tail -n 1)"
    echo "$peer: NOT INSTALLED ($pin): ${why:-see $log}"
    failed+=("$peer: ${why:-see $log}")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  printf 'could not set up: %s\n' "${failed[@]}"
fi
exit 0
