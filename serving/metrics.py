"""Prometheus metrics, in a registry per app so that several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # `*_created` series only add noise to every scrape
        self.registry = CollectorRegistry()
        # protocol: "v1" (the friendly API), "v2-http", "v2-grpc", or "shadow" (a request mirrored to
        # a rollout's candidate); status: as HTTP would say it; version: the version that answered
        # (a name serves its alias's holder and, during a rollout, a candidate: serving.rollout).
        self.requests = Counter("waldo_requests", "Inference requests by model, version, status and protocol",
                                ["model", "version", "status", "protocol"], registry=self.registry)
        self.latency = Histogram(
            "waldo_request_latency_seconds", "Inference latency, request read to response",
            ["model", "version", "protocol"],
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.batch_size = Histogram("waldo_batch_size", "Images per ONNX Runtime run", ["model", "version"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue_depth = Gauge("waldo_queue_depth", "Requests waiting for a batch", ["model"],
                                 registry=self.registry)
        self.version = Gauge("waldo_model_version", "Version being served (value) per model",
                             ["model"], registry=self.registry)
        self.reloads = Counter("waldo_reloads", "Reload attempts by model and outcome",
                               ["model", "outcome"], registry=self.registry)
        # Rollouts (serving.rollout): the candidate beside the primary, what shadow traffic found
        # and the automatic rollbacks.
        self.candidate = Gauge("waldo_rollout_candidate", "Candidate version (value) per model; 0 "
                               "when there is none", ["model"], registry=self.registry)
        self.shadow_rows = Counter("waldo_shadow_rows", "Rows a shadow candidate answered, compared "
                                   "with the primary", ["model", "version"], registry=self.registry)
        self.shadow_agreeing = Counter("waldo_shadow_agreeing_rows", "Shadow rows whose top-1 class "
                                       "matches the primary's", ["model", "version"], registry=self.registry)
        self.agreement = Gauge("waldo_shadow_agreement", "Top-1 agreement of the shadow candidate "
                               "with the primary since the rollout began (0-1)", ["model", "version"],
                               registry=self.registry)
        self.box_iou = Histogram("waldo_shadow_box_iou", "Box IoU of the shadow candidate's answer "
                                 "with the primary's (localization)", ["model", "version"],
                                 buckets=(.1, .25, .5, .75, .9, .95, .99, 1), registry=self.registry)
        self.rollbacks = Counter("waldo_rollbacks", "Automatic rollbacks of a candidate",
                                 ["model", "version"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
