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
        # protocol: "v1" (the friendly API), "v2-http" or "v2-grpc"; status: as HTTP would say it.
        self.requests = Counter("waldo_requests", "Inference requests by model, status and protocol",
                                ["model", "status", "protocol"], registry=self.registry)
        self.latency = Histogram(
            "waldo_request_latency_seconds", "Inference latency, request read to response",
            ["model", "protocol"],
            buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
            registry=self.registry)
        self.batch_size = Histogram("waldo_batch_size", "Images per ONNX Runtime run", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue_depth = Gauge("waldo_queue_depth", "Requests waiting for a batch", ["model"],
                                 registry=self.registry)
        self.version = Gauge("waldo_model_version", "Version being served (value) per model",
                             ["model"], registry=self.registry)
        self.reloads = Counter("waldo_reloads", "Reload attempts by model and outcome",
                               ["model", "outcome"], registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
