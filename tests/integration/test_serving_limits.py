"""The inference service against hostile and careless clients, as a real `waldo serve` process
on 127.0.0.1 (serving the tiny models of `tiny_repo`): connections that send nothing, half their
headers or a trickle of body; bodies sent whole before the answer is read; malformed framing;
requests whose images would decode to more memory than the service allows; and more idle
connections than the process has files.

Every case checks the status (or the close), the one-line answer or log line, that no traceback
was logged, and that the service still answers.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
import tritonclient.grpc as tgrpc
from PIL import Image
from support import Server, wait_until
from support.serving import metric, waldo_serve
from support.v2 import start_v2, tensor_input
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.servers

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 2.0


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory) -> Iterator[Server]:
    """Short timeouts, so that slow clients are closed within the test's patience."""
    repo, _ = tiny_repo
    running = waldo_serve(repo, tmp_path_factory.mktemp("limits"),
                          env={"WALDO_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                               "WALDO_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)})
    try:
        yield running
    finally:
        running.stop()


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (reads until EOF; a reset counts as a close)."""
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started


def still_serves(server: Server) -> None:
    assert httpx.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert "Traceback" not in server.tail(200_000), server.tail()


def png(size: int, colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, "PNG")
    return out.getvalue()


# --- slow and idle clients --------------------------------------------------------------------
def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server: Server) -> None:
    waited = closed_after(connect(server))
    assert HEADER_TIMEOUT_S * 0.9 <= waited < HEADER_TIMEOUT_S + 2, waited
    still_serves(server)


def test_half_sent_headers_are_closed_with_one_log_line(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: waldo\r\nX-Half: ")
    port = sock.getsockname()[1]
    assert closed_after(sock) < HEADER_TIMEOUT_S + 2
    line = f"closed the connection from 127.0.0.1:{port}: its request headers did not arrive within 1 s"
    assert server.tail(200_000).count(line) == 1, server.tail()
    still_serves(server)


def test_a_body_trickled_a_byte_at_a_time_is_cut_off(server: Server) -> None:
    sock = connect(server)
    sock.sendall(b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: waldo\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(OSError):  # broken pipe or reset once the server has closed
        for _ in range(30):
            sock.sendall(b" ")
            time.sleep(0.25)  # the trickle itself: a byte every quarter of a second
    assert time.monotonic() - started < BODY_TIMEOUT_S + 2
    sock.close()
    line = f"closed the connection from 127.0.0.1:{port}: its request body did not arrive within 2 s"
    assert line in server.tail(200_000), server.tail()
    still_serves(server)


# --- framing and oversized bodies -------------------------------------------------------------
@pytest.mark.parametrize("header", [b"Content-Length: abc", b"Content-Length: -5",
                                    b"Content-Length: 1\r\nContent-Length: 2", b"Transfer-Encoding: gzip"])
def test_malformed_framing_gets_a_json_400(server: Server, header: bytes) -> None:
    sock = connect(server)
    sock.sendall(b"POST /v1/models/cnn/predict HTTP/1.1\r\nHost: waldo\r\n" + header + b"\r\n\r\n")
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "bad_request"
    still_serves(server)


def test_a_client_that_sends_its_whole_body_first_reads_the_413(server: Server) -> None:
    """http.client and requests write all of the body before they read: the service reads and
    drops it (up to drain_bytes) instead of resetting the connection under them."""
    body = b"{" + b" " * (40 * 2**20) + b"}"
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/v1/models/cnn/predict", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]["message"].endswith("exceeds the limit of 16777216")
    conn.close()
    got = requests.post(server.url + "/v1/models/cnn/predict", data=body,
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert got.status_code == 413 and got.json()["error"]["code"] == "too_large"
    still_serves(server)


# --- the memory budget ------------------------------------------------------------------------
def test_a_request_over_the_pixel_budget_is_refused_before_decoding(server: Server) -> None:
    """17 images at the per-image limit (4096x4096) pass one by one but not together (default
    budget: 256 Mi pixels); the answer names the budget and comes before any decoding."""
    big = png(4096)
    files = [("file", (f"{i}.png", big, "image/png")) for i in range(17)]
    started = time.monotonic()
    got = httpx.post(server.url + "/v1/models/cnn/predict", files=files, timeout=60)
    assert got.status_code == 413, got.text
    message = got.json()["error"]["message"]
    assert "file[16] ('16.png')" in message
    assert "the per-request budget is 268435456 decoded pixels" in message
    assert time.monotonic() - started < 5
    still_serves(server)


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def test_a_request_of_many_large_images_is_decoded_one_at_a_time(server: Server) -> None:
    """64 PNGs of 2048x2048 decode to 768 MB of RGB at once; one at a time they never do."""
    image = Image.new("L", (28, 28), 0)
    image.paste(255, (10, 4, 18, 24))  # a bar: a "1"
    out = io.BytesIO()
    image.resize((2048, 2048), Image.Resampling.NEAREST).save(out, "PNG")
    files = [("file", (f"{i}.png", out.getvalue(), "image/png")) for i in range(64)]
    got = httpx.post(server.url + "/v1/models/cnn/predict", files=files, timeout=120)
    assert got.status_code == 200, got.text
    predictions = got.json()["predictions"]
    assert len(predictions) == 64 and len({json.dumps(p) for p in predictions}) == 1
    assert peak_rss_mb(server.proc.pid) < 500
    still_serves(server)


def test_an_answer_over_max_response_bytes_is_refused_before_any_work(tiny_repo, tmp_path: Path) -> None:
    """With max_response_bytes at 2 kB, 64 rows are refused (413, RESOURCE_EXHAUSTED over gRPC)
    from the size they would make, reckoned before anything is decoded or inferred; one row
    is answered, on /v1, /v2 and gRPC alike."""
    v2_server = start_v2(tiny_repo[0], tmp_path, env={"WALDO_MAX_RESPONSE_BYTES": "2048"})
    server, client = v2_server.server, v2_server.grpc
    try:
        for rows, status in ((64, 413), (1, 200)):
            x = np.zeros((rows, 1, 28, 28), np.float32)
            head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                           "parameters": {"binary_data_size": x.nbytes}}]}).encode()
            v2 = httpx.post(server.url + "/v2/models/cnn/infer", content=head + x.tobytes(), timeout=60,
                            headers={"Inference-Header-Content-Length": str(len(head))})
            assert v2.status_code == status, v2.text
            v1 = httpx.post(server.url + "/v1/models/cnn/predict", params={"top_k": 10}, timeout=60,
                            json={"instances": x.tolist()})
            assert v1.status_code == status, v1.text
            tensor = tensor_input(tgrpc, x)
            if status == 413:
                assert "(max_response_bytes)" in v2.json()["error"]
                assert v1.json()["error"]["code"] == "too_large"
                with pytest.raises(InferenceServerException) as caught:
                    client.infer("cnn", [tensor])
                assert str(caught.value.status()) == "StatusCode.RESOURCE_EXHAUSTED", caught.value
            else:
                assert client.infer("cnn", [tensor]).as_numpy("probabilities").shape == (1, 10)
            still_serves(server)
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        # Rows inferred: no refused one ran.
        assert metric(metrics, 'waldo_batch_size_sum{model="cnn",version="1"}') == 3
    finally:
        v2_server.stop()


# --- more idle connections than files ---------------------------------------------------------
def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end has closed `sock`, without waiting (leaves it non-blocking)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def test_healthz_answers_with_more_idle_connections_than_open_files(tiny_repo, tmp_path: Path) -> None:
    """With 256 files, 400 idle connections: the service caps its connections to fit, closes the
    oldest idle one for each newcomer, keeps answering, and logs a few lines, not a flood."""
    repo, _ = tiny_repo
    server = waldo_serve(repo, tmp_path, prefix=("prlimit", "--nofile=256:256", "--"))
    sockets = []
    try:
        for _ in range(400):
            sockets.append(connect(server))
        # The cap is 128: once the service has taken all 400 in, it has closed 272 of them.
        closed: set[int] = set()

        def taken_in() -> bool:
            closed.update(i for i, sock in enumerate(sockets) if i not in closed and closed_by_peer(sock))
            return len(closed) >= 400 - 128

        wait_until(taken_in, what="the service closes the oldest idle connections past its cap",
                   timeout=30, proc=server.proc, log=server.log, detail=lambda: f"{len(closed)} closed")
        started = time.monotonic()
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started < 2
        log = server.tail(10_000_000)
        assert "Traceback" not in log
        assert len(log.splitlines()) < 60, log[-3000:]
        assert "connection cap (128) reached: closed the oldest idle connection" in log
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


# --- a gRPC flood, under the same file budget ---------------------------------------------------
GRPC_HEADER_TIMEOUT_S = 2.0
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closes `sock` within `wait_s` (whatever it sent before, e.g. its
    HTTP/2 SETTINGS, is read and dropped)."""
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_a_grpc_flood_leaves_healthz_answering_and_grpc_back_within_the_header_timeout(
        tiny_repo, tmp_path: Path) -> None:
    """With 512 files, 600 gRPC connections that send nothing or only the HTTP/2 preface: gRPC's
    share of the one connection budget holds some of them until the header timeout and closes
    the rest at once, so /healthz answers within a second throughout, the process never runs
    out of files, and gRPC inference works again once the header timeout has passed."""
    v2_server = start_v2(tiny_repo[0], tmp_path, prefix=("prlimit", "--nofile=512:512", "--"),
                         env={"WALDO_HEADER_TIMEOUT_S": str(GRPC_HEADER_TIMEOUT_S)})
    server, grpc_address = v2_server.server, v2_server.grpc_address
    grpc_port = int(grpc_address.rsplit(":", 1)[1])
    tensor = tensor_input(tgrpc, np.zeros((1, 1, 28, 28), np.float32))

    def grpc_infers() -> bool:
        client = tgrpc.InferenceServerClient(grpc_address)  # a new channel: no reconnect backoff
        try:
            return client.infer("cnn", [tensor], client_timeout=2).as_numpy("probabilities").shape == (1, 10)
        except Exception:
            return False
        finally:
            client.close()

    sockets: list[socket.socket] = []
    try:
        assert grpc_infers()
        for i in range(600):
            sock = socket.create_connection(("127.0.0.1", grpc_port), timeout=10)
            if i % 2:
                sock.sendall(HTTP2_PREFACE)
            sockets.append(sock)
        flooded_at = time.monotonic()
        slowest = 0.0
        while time.monotonic() - flooded_at < GRPC_HEADER_TIMEOUT_S:
            started = time.monotonic()
            assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            assert len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir())) < 512
            time.sleep(0.1)
        assert slowest < 1, slowest
        wait_until(grpc_infers, what="gRPC inference comes back after the flood", interval=0,
                   timeout=flooded_at + GRPC_HEADER_TIMEOUT_S + 5 - time.monotonic(), proc=server.proc)
        # Every flooding connection is closed by the server: at once past the share, or at the
        # header timeout; none is left holding a file.
        assert all(closed_by_server(sock, 2) for sock in sockets)
        log = server.tail(10_000_000)
        assert "Traceback" not in log and "File descriptor limit" not in log, log[-3000:]
        assert "Too many open files" not in log, log[-3000:]
        assert "(HTTP 336, gRPC 48)" in log  # 512 files less 128 kept: 384, gRPC's share scaled
    finally:
        for sock in sockets:
            sock.close()
        v2_server.stop()
