# The inference service: FastAPI on ONNX Runtime with CUDA (onnxruntime-gpu), no torch.
#
#   docker build -f infra/docker/serving.Dockerfile -t waldo/serving:0.1.0 .
#   docker run --gpus 1 -p 8000:8000 -p 8001:8001 -e WALDO_MODELS=cnn@production \
#       -e WALDO_TRACKING_URI=http://mlflow:5000 waldo/serving:0.1.0
#
# Without a GPU the same image runs on the CPU (onnxruntime-gpu falls back, and /v1/models says
# which providers are in effect); WALDO_REQUIRE_GPU=true makes that an error instead.
# The base image. The default is the official one; a machine without a registry passes a local
# stand-in with the same Debian and Python (scripts/stack.sh: --build-arg PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    WALDO_CACHE_DIR=/home/waldo/.cache/waldo/models \
    WALDO_GRPC_PORT=8001

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash waldo \
 && mkdir -p /home/waldo/.cache/waldo/models \
 && chown -R waldo:waldo /home/waldo/.cache \
 && python -m venv /opt/venv

WORKDIR /opt/waldo
COPY pyproject.toml infra/docker/requirements.py ./
# The serving-gpu extra: onnxruntime-gpu and never the CPU onnxruntime (both install into the
# same folder and the last one wins). Its [cuda,cudnn] extras bring the CUDA 13
# runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9 as wheels, so a slim base suffices; ldconfig makes
# them findable for ORT's CUDA provider. The check fails the build if torch or the CPU build
# of onnxruntime got in.
RUN python requirements.py serving-gpu > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt "onnxruntime-gpu[cuda,cudnn]>=1.20" \
 && find /opt/venv/lib -path '*/site-packages/nvidia/*' -type d -name lib > /etc/ld.so.conf.d/waldo-nvidia.conf \
 && ldconfig \
 && python -c "import importlib.metadata as md, sys; have = {d.metadata['Name'].lower() for d in md.distributions()}; bad = sorted(have & {'torch', 'onnxruntime'}); sys.exit(f'serving image must not contain {bad}' if bad else None if 'onnxruntime-gpu' in have else 'onnxruntime-gpu is missing')"

COPY README.md ./
COPY training ./training
COPY serving ./serving
COPY services ./services
COPY httpapi ./httpapi
COPY waldo ./waldo
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info

USER 1000:1000
WORKDIR /home/waldo
# HTTP (friendly API and Open Inference Protocol v2) and the v2 gRPC service
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
