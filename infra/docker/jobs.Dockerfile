# The jobs API (control plane): FastAPI + Ray's job submission client, no torch. Jobs it submits
# run in the training image on the Ray cluster, not here.
#
#   docker build -f infra/docker/jobs.Dockerfile -t waldo/jobs:0.1.0 .
# The base image. The default is the official one; a machine without a registry passes a local
# stand-in with the same Debian and Python (scripts/stack.sh: --build-arg PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash waldo \
 && python -m venv /opt/venv

WORKDIR /opt/waldo
COPY pyproject.toml infra/docker/requirements.py ./
# The jobs extra (fastapi, uvicorn, pydantic-settings, the Ray client at the cluster's version);
# the build fails if torch got in.
RUN python requirements.py jobs > requirements.txt \
 && pip install --no-cache-dir -r requirements.txt \
 && python -c "import importlib.util, sys; sys.exit('jobs image must not contain torch' if importlib.util.find_spec('torch') else None)"

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
EXPOSE 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8001/healthz', timeout=4)"]
# Settings come from WALDO_JOBS_* (README: Jobs API); without a valid token it exits with one
# line, `waldo-jobs: error: WALDO_JOBS_TOKEN: ...`, and status 2.
CMD ["python", "-m", "services.jobs", "--host", "0.0.0.0", "--port", "8001"]
