"""Send a few held-out digits to a running Waldo service and print what it answers.

    python scripts/ask_service.py [--url http://127.0.0.1:8000] [--model cnn] [--count 5]

The digits come from the test split of the embedded `mnist-5k` data (real MNIST digits that
training never sees), sent as base64 PNGs in one JSON request. Standard library only, apart
from Waldo's data module.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
import urllib.error
import urllib.request


def wait_ready(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            sys.exit(f"ask_service: {url} was not ready within {seconds:.0f} s")
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for /readyz")
    args = parser.parse_args()

    from PIL import Image

    from training.data.mnist5k import MNIST5kDataModule

    dm = MNIST5kDataModule()
    dm.setup("test")
    instances, truth = [], []
    for i in range(args.count):
        x, y = dm.test_set[i]
        buf = io.BytesIO()
        Image.fromarray(x[0].numpy()).save(buf, "PNG")
        instances.append({"b64": base64.b64encode(buf.getvalue()).decode()})
        truth.append(str(int(y)))

    wait_ready(args.url, args.wait)
    request = urllib.request.Request(
        f"{args.url}/v1/models/{args.model}/predict?top_k=1",
        data=json.dumps({"instances": instances}).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            answer = json.load(r)
    except urllib.error.HTTPError as exc:
        sys.exit(f"ask_service: {exc.code} {exc.read().decode()}")
    print(f"{args.url} answered with {answer['model']} v{answer['version']}:")
    for want, got in zip(truth, answer["predictions"]):
        mark = "ok" if got["label"] == want else "WRONG"
        print(f"  digit {want}: predicted {got['label']} (p={got['probability']:.3f}) {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
