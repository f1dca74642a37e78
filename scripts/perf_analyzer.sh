#!/usr/bin/env bash
# Make Triton's load generator available as .venv/bin/perf_analyzer (idempotent).
# The binary comes from the tritonclient 2.45.0 manylinux wheel (later wheels lack it or need
# glibc 2.38); it links libb64.so.0d (Debian: libb64-0d) and libcudart.so.12 (taken from the
# nvidia-cuda-runtime-cu12 wheel), even on a CPU-only machine.
# When it cannot be set up this prints one line and exits 0, so the tests that need it skip.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$PWD/.venv"
PA_HOME="$VENV/share/perf_analyzer"     # bin/perf_analyzer and lib/*.so
WRAPPER="$VENV/bin/perf_analyzer"
TRITONCLIENT_VERSION=2.45.0
CUDART_VERSION=12.9.79                   # any 12.x wheel ships lib/libcudart.so.12

unavailable() { echo "perf_analyzer unavailable: $*" >&2; exit 0; }

# Fast path: already installed and starting. (--help exits 99; --version prints to stderr, exits 0.)
if [ -x "$WRAPPER" ] && [[ "$("$WRAPPER" --version 2>&1)" == *"Version $TRITONCLIENT_VERSION "* ]]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || unavailable "no .venv here (make it first, e.g. scripts/test.sh)"
[ "$(uname -m)" = x86_64 ] || unavailable "only the x86_64 binary is wired up"

# Build in a staging folder, then move it into place; removed on exit (stale ones after an hour).
mkdir -p "$VENV/share"
find "$VENV/share" -maxdepth 1 -name '.perf_analyzer.*' -mmin +60 -exec rm -rf {} +
STAGE="$(mktemp -d "$VENV/share/.perf_analyzer.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/dl"
chmod 755 "$STAGE"

# libb64-0d: apt-get as root (or passwordless sudo); otherwise copy the .so out of the .deb.
have_libb64() { dpkg-query -W -f='${db:Status-Status}' libb64-0d 2>/dev/null | grep -qx installed; }
if ! have_libb64; then
  SUDO=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  fi
  if [ "$(id -u)" -eq 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
    apt_install() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends libb64-0d >>"$STAGE/apt.log" 2>&1; }
    apt_install || { "${SUDO[@]}" apt-get update -qq >>"$STAGE/apt.log" 2>&1 && apt_install; } || true
  fi
  if ! have_libb64; then
    (cd "$STAGE/dl" && apt-get download -qq libb64-0d >/dev/null 2>&1 \
      && dpkg-deb -x libb64-0d_*.deb deb \
      && cp deb/usr/lib/*/libb64.so.0d "$STAGE/lib/") \
      || unavailable "libb64-0d is missing and could not be installed (needs root or sudo -n)" \
           "$(tail -n 1 "$STAGE/apt.log" 2>/dev/null || true)"
  fi
fi

# Download both wheels (pip's cache makes a rerun cheap) and extract the two files we need.
if ! "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 -d "$STAGE/dl" \
    "tritonclient==$TRITONCLIENT_VERSION" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" \
    >"$STAGE/pip.log" 2>&1; then
  unavailable "pip download failed: $(grep -E 'ERROR|Error' "$STAGE/pip.log" | tail -n 1)"
fi
extract() {  # extract WHEEL MEMBER DEST
  "$VENV/bin/python" - "$@" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
}
extract "$STAGE"/dl/tritonclient-"$TRITONCLIENT_VERSION"-*.whl \
  "tritonclient-$TRITONCLIENT_VERSION.data/data/bin/perf_analyzer" "$STAGE/bin/perf_analyzer"
extract "$STAGE"/dl/nvidia_cuda_runtime_cu12-"$CUDART_VERSION"-*.whl \
  nvidia/cuda_runtime/lib/libcudart.so.12 "$STAGE/lib/libcudart.so.12"
chmod 755 "$STAGE/bin/perf_analyzer"
rm -rf "$STAGE/dl" "$STAGE"/*.log

# Swap the staged tree in, then write the wrapper that points the loader at lib/.
rm -rf "$PA_HOME"
mv "$STAGE" "$PA_HOME"
cat >"$WRAPPER.tmp" <<'SH'
#!/bin/sh
# Written by scripts/perf_analyzer.sh: Triton perf_analyzer with its bundled libraries.
pa="$(dirname "$(readlink -f "$0")")/../share/perf_analyzer"
export LD_LIBRARY_PATH="$pa/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$pa/bin/perf_analyzer" "$@"
SH
chmod 755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"

# Prove it starts; a broken wrapper is removed so that callers see it as absent.
if ! out="$("$WRAPPER" --version 2>&1)"; then
  rm -f "$WRAPPER"
  unavailable "it does not start: $(printf '%s\n' "$out" | head -n 1)"
fi
