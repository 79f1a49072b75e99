"""What the service counts, exposed at ``GET /metrics`` in the Prometheus text format
(``prometheus-client``), one registry per app (two apps in one process never mix counts).

* ``advrank_requests_total{method, route, status}``: every request answered;
* ``advrank_request_seconds{route}``: how long each took, body included (a histogram);
* ``advrank_stage_seconds{stage}``: where a search's time goes (decode, forward, search);
* ``advrank_batch_size``: searches per batch through the model (a histogram);
* ``advrank_rejections_total{reason}``: requests refused (queue_full, timeout, too_large,
  bad_request, unsupported, unauthorized, not_found, unprocessable);
* ``advrank_disconnects_total``: clients that hung up before their request was in;
* ``advrank_queue_depth`` (searches waiting) and ``advrank_items`` (items held).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: request latencies (s): loopback searches take milliseconds, trickled bodies seconds
LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class ServiceMetrics:
    """The service's counters, gauges and histograms (see the module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("advrank_requests", "requests answered",
                                ("method", "route", "status"), registry=r)
        self.latency = Histogram("advrank_request_seconds", "time to answer a request",
                                 ("route",), buckets=LATENCY, registry=r)
        self.stages = Histogram("advrank_stage_seconds", "time per step of a search",
                                ("stage",), buckets=LATENCY, registry=r)
        self.batch = Histogram("advrank_batch_size", "searches per batch", buckets=BATCHES,
                               registry=r)
        self.rejections = Counter("advrank_rejections", "requests refused", ("reason",),
                                  registry=r)
        self.disconnects = Counter("advrank_disconnects",
                                   "clients that hung up before their request was in",
                                   registry=r)
        self.queue = Gauge("advrank_queue_depth", "searches waiting for the model", registry=r)
        self.items = Gauge("advrank_items", "items the search holds", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
