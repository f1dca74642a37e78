"""An S3 server for the benchmarks that read buckets: moto_server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def start_moto(workdir: Path, bucket: str) -> subprocess.Popen:
    """moto_server on a free port, this process's environment pointed at it, `bucket` made."""
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                               "-p", port], cwd=workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    for _ in range(100):  # until it answers
        try:
            boto3.client("s3").create_bucket(Bucket=bucket)
            return server
        except Exception:
            time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"moto_server did not answer on port {port}")
