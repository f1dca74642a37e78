"""What every test that starts a process or needs a trained run uses, in one place each:

    clean_env(**extra)        the environment for a `waldo` (or mlflow, ray) subprocess
    free_port()               a free port on 127.0.0.1
    start_process / Processes a process (or several) in its own session, logging to a file
    stop_group(proc)          end such a process and everything it spawned, nothing else
    session_pids(sid)         the live processes of a session (Linux /proc)
    wait_until / wait_http    poll a predicate (or a URL) with a deadline; fail with the log tail
    poll(predicate, timeout=) the same, for a wait that may run out: whether it came true
    start_server / Server     a server on a free port, waited for until it answers 200
    waldo_command, start_waldo, run_waldo, run_waldo_all   the `waldo` command
    waldo_main(capsys, ...)   the same in this process, through `waldo.cli.main`
    user_error_line(status, err)   the one stderr line of a user error (status 2), or fail
    error_line(err, command)  the one `waldo COMMAND: error:` line on stderr, or fail
    modules_loaded_by(script) top-level modules a fresh interpreter holds after `script`
    ray_cluster(root, ...)    `ray start` head + worker nodes, stopped without `ray stop`
                              (the session's local Ray in process: the `local_ray` fixture)
    RunFactory / TrainedRun   trained runs, one per distinct spec per session (`trained_run`)
    DIGITS_CNN, PUBLISHED_CNN, SERVED_LOCALIZER   specs that several tests train (so the session
                              trains each once)
    artifact_paths(client, run_id)   every file artifact of an MLflow run
    in_folder(path)           work in a folder with no tracking URI or Ray address inherited
    V2Server, start_v2, ...   `waldo serve --grpc-port` with tritonclient for each protocol
                              (support.v2; imported where used, as it loads tritonclient)
    waldo_serve, metric       `waldo serve` on a free port; one Prometheus sample (support.serving)
    write_repository, ...     two tiny ONNX models whose answers a test can recompute, and images
                              for them (support.tiny; the `tiny_repo` fixture)
    register_tiny(uri, name, ...)   a registered version of a tiny model in an MLflow registry,
                              no training (support.registry; imported where used, as it loads mlflow)
    FakeJobSubmission, waldo_meta   an in-process fake of Ray's job-submission client
                              (support.fakes; imported on first use, as it loads Ray's SDK)

Fixtures built on them live in tests/conftest.py.
"""

from support.cluster import LOCAL_RAY_CPUS, RayCluster, ray_cluster
from support.processes import (
    BIN,
    STARTUP_TIMEOUT_S,
    Processes,
    Server,
    clean_env,
    free_port,
    http_status,
    log_tail,
    poll,
    session_pids,
    start_process,
    start_server,
    stop_group,
    wait_http,
    wait_until,
)
from support.runs import (
    DIGITS_CNN,
    PUBLISHED_CNN,
    SERVED_LOCALIZER,
    RunFactory,
    TrainedRun,
    artifact_paths,
    in_folder,
)
from support.waldo import (
    REPO_ROOT,
    error_line,
    modules_loaded_by,
    run_waldo,
    run_waldo_all,
    start_waldo,
    user_error_line,
    waldo_command,
    waldo_main,
)

S3_BUCKET = "waldo"  # the bucket the `s3` fixture (tests/conftest.py) makes on the suite's moto_server

__all__ = [
    "BIN", "DIGITS_CNN", "LOCAL_RAY_CPUS", "PUBLISHED_CNN", "SERVED_LOCALIZER", "S3_BUCKET", "REPO_ROOT",
    "STARTUP_TIMEOUT_S", "FakeJobSubmission", "Processes", "RayCluster", "RunFactory", "Server",
    "TrainedRun", "artifact_paths", "clean_env", "free_port", "http_status", "in_folder",
    "log_tail", "modules_loaded_by", "poll", "ray_cluster", "run_waldo", "run_waldo_all", "session_pids",
    "start_process", "start_server", "start_waldo", "stop_group", "wait_http", "wait_until",
    "error_line", "user_error_line", "waldo_command", "waldo_main", "waldo_meta",
]

_LAZY = {"FakeJobSubmission": "support.fakes", "waldo_meta": "support.fakes"}


def __getattr__(name: str):
    """The names of modules that are slow to import (Ray's SDK), imported when first asked for."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
