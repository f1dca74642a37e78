"""`mlflow models serve --env-manager local --workers 1` of the ONNX file logged with
`mlflow.onnx.log_model(..., save_as_external_data=False)` into a temporary store. Its pyfunc
server cannot decode images, so it always gets the preprocessed tensor as `{"inputs": [...]}`."""

from __future__ import annotations

import sys
from pathlib import Path

from .process import Server, free_port, server_env


def check(ctx, peer) -> str | None:
    if not Path(sys.executable).with_name("mlflow").exists():
        return "no mlflow command beside this interpreter"
    return None


def log_to_mlflow(model_file: Path, work: Path, threads: int) -> tuple[str, str]:
    """Log the ONNX file into a temporary MLflow store; return (model URI, tracking URI)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import mlflow

    for logger in ("mlflow", "alembic"):  # mlflow configures its loggers on import
        logging.getLogger(logger).setLevel(logging.ERROR)
    import numpy as np
    import onnx
    from mlflow.models import infer_signature

    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name("serving-compare")  # --repeats: logged once, reused
    experiment = found.experiment_id if found else mlflow.create_experiment(
        "serving-compare", artifact_location=(work / "artifacts").as_uri())
    model = onnx.load(str(model_file))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    signature = infer_signature(np.zeros((1, *dims), np.float32))
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.onnx.log_model(
            model, name="model", signature=signature, save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            onnx_session_options={"intra_op_num_threads": threads, "inter_op_num_threads": 1},
        )
    return info.model_uri, uri


def launch(ctx, peer) -> Server:
    model_uri, tracking_uri = log_to_mlflow(ctx.model_dir / "model.onnx", ctx.work, ctx.args.threads)
    port = free_port()
    env = server_env(ctx.args.threads, MLFLOW_TRACKING_URI=tracking_uri)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", model_uri,
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = Server(peer.title, cmd, env, f"http://127.0.0.1:{port}/ping",
                    ctx.work / f"server-{peer.name}.log", ctx.work)
    server.http, server.grpc = f"http://127.0.0.1:{port}", None
    return server
