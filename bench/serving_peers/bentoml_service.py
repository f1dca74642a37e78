"""The BentoML service (imported by `bentoml serve` in .bench-venvs/bentoml only): one batchable
API taking Waldo's friendly JSON, `{"instances": [...]}`. BentoML concatenates the `instances`
lists of the requests it batches, calls `predict` once, and splits the returned list back."""

from __future__ import annotations

import json
import os

import bentoml
import numpy as np

from serving_peers.peer_model import OnnxModel

CONF = json.loads(os.environ["SERVING_COMPARE_BENTOML"])


@bentoml.service(workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class OnnxService:
    def __init__(self):
        self.model = OnnxModel(CONF["model_dir"], CONF["threads"])

    @bentoml.api(batchable=True, max_batch_size=CONF["max_batch_size"], max_latency_ms=60_000)
    def predict(self, instances: list) -> list:
        items = [self.model.item(v) for v in instances]  # decode + preprocess, like Waldo
        logits = self.model.logits(np.stack([x for x, _ in items]))
        return self.model.predictions(logits, [size for _, size in items])
