# Ray head, Ray workers and Ray job drivers (`waldo train ...`, `python -m training.jobrunner`):
# torch 2.14.1 (the CUDA build from PyPI), Lightning, MLflow, Ray 2.60 and the whole Waldo package.
#
#   docker build -f infra/docker/training.Dockerfile -t waldo/training:0.1.0 .
#
# Base: python slim, not rayproject/ray:2.60.0-py311-gpu. torch's PyPI wheel brings its own CUDA
# runtime, cuBLAS and cuDNN as nvidia-* wheels, so the CUDA toolkit in Ray's GPU image would be
# gigabytes of dead weight, and that image's conda Python with a preinstalled Ray would be a
# second source of versions beside pyproject.toml. Here every version comes from
# pyproject.toml, on the same Python and Debian as the serving and jobs images. The GPU host
# needs only the NVIDIA driver and container toolkit.
# The base image. The default is the official one; a machine without a registry passes a local
# stand-in with the same Debian and Python (scripts/stack.sh: --build-arg PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

# The extras to install; a job that needs more (e.g. "training distributed bench") can add them.
ARG EXTRAS="training distributed"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash waldo \
 && python -m venv /opt/venv

WORKDIR /opt/waldo
# Dependencies first, from pyproject.toml alone, so that this multi-gigabyte layer is rebuilt
# only when pyproject.toml changes and not on every code edit.
COPY pyproject.toml infra/docker/requirements.py ./
# ($EXTRAS unquoted on purpose: one argument per extra.)
RUN python requirements.py $EXTRAS > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt

# Then Waldo itself (all three packages: the job entrypoint imports training, the jobs API
# services), without touching the dependencies.
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
# No HEALTHCHECK: one image, several roles. docker-compose.yml probes the head and the workers
# (dashboard /api/gcs_healthz, node agent :52365/api/healthz); KubeRay adds its own probes.
CMD ["ray", "start", "--head", "--block", "--dashboard-host=0.0.0.0", "--disable-usage-stats"]
