# MLflow tracking server and model registry for the compose stack: PostgreSQL backend
# (psycopg2), artifacts proxied to MinIO/S3 (boto3). docker-compose.yml gives the command line.
#
#   docker build -f infra/docker/mlflow.Dockerfile -t waldo/mlflow:0.1.0 .
# The base image. The default is the official one; a machine without a registry passes a local
# stand-in with the same Debian and Python (scripts/stack.sh: --build-arg PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

# MLFLOW_VERSION must equal the mlflow pin in pyproject.toml (tests/integration/test_infra.py checks).
ARG MLFLOW_VERSION=3.17.2

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash mlflow \
 && python -m venv /opt/venv \
 && pip install --no-cache-dir "mlflow==${MLFLOW_VERSION}" psycopg2-binary==2.9.13 boto3==1.44.5

USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=40s --retries=10 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
