"""The daemon's Prometheus metrics, on prometheus-client (docs/METRICS.md lists them).

One ``Metrics`` per mount, with its own registry:

* measured where they happen: every FUSE request (``errors.funnel`` calls
  ``request()``: count, latency, errno of a failure) and every upload that
  commits (``upload_committed()`` from write_session.py: time from the first
  byte sent to the store, and from the close to the commit);
* read at scrape time from the daemon's own state (``_StateCollector``):
  the per-store counters the status channel shows (bytes, uploads, deletes),
  the failures per store and operation, uploads and downloads in flight,
  spool bytes, the memory budget; so ``gsfs status`` and /metrics never
  disagree;
* the process collector (CPU, RSS, open files) of prometheus-client.

Served on ``-o metrics_port=PORT`` (``metrics_address``, default 127.0.0.1)
by prometheus-client's HTTP server in a thread of its own, and/or written to
``-o metrics_file=PATH`` every 5 s (``render()``), both from the same registry.
"""

import errno as errno_names
import logging
import time

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gsfs.budget import BUDGET

LOG = logging.getLogger("gsfs.fs")

# seconds; FUSE requests take 10 µs (a cached getattr) to minutes (a close
# that waits for a big upload)
REQUEST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600)
UPLOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The registry of one mount and the metrics measured in place."""

    def __init__(self, ops):
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)
        self.requests = prometheus_client.Counter(
            "gsfs_requests", "FUSE requests handled, per store and operation.",
            ["store", "op"], registry=self.registry)
        self.request_errors = prometheus_client.Counter(
            "gsfs_request_errors", "FUSE requests that failed, per store, operation "
            "and errno (answers that are not failures, such as ENOENT of a lookup, "
            "are not counted).", ["store", "op", "errno"], registry=self.registry)
        self.request_seconds = prometheus_client.Histogram(
            "gsfs_request_seconds", "Time to answer a FUSE request, per store and "
            "operation.", ["store", "op"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.upload_seconds = prometheus_client.Histogram(
            "gsfs_upload_seconds", "Committed uploads: time from the first byte sent to "
            "the store to the commit.", ["store"], buckets=UPLOAD_BUCKETS,
            registry=self.registry)
        self.commit_seconds = prometheus_client.Histogram(
            "gsfs_commit_seconds", "Committed uploads: time from the close (or the spool "
            "upload's start) to the commit, what a writer's close(2) waits.", ["store"],
            buckets=UPLOAD_BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(ops))
        self.server = None
        self.url = None             # http://ADDRESS:PORT/metrics while served

    def request(self, op, store, seconds, code=None):
        store = store or "-"
        self.requests.labels(store, op).inc()
        self.request_seconds.labels(store, op).observe(seconds)
        if code is not None:
            self.request_errors.labels(store, op, errno_names.errorcode.get(code, str(code))).inc()

    def upload_committed(self, store, first_byte_at, commit_started, now=None):
        now = time.monotonic() if now is None else now
        if first_byte_at is not None:
            self.upload_seconds.labels(store).observe(max(0.0, now - first_byte_at))
        if commit_started is not None:
            self.commit_seconds.labels(store).observe(max(0.0, now - commit_started))

    def render(self):
        """The Prometheus text exposition of every metric (bytes)."""
        return prometheus_client.generate_latest(self.registry)

    def serve(self, port, address="127.0.0.1"):
        """Serve /metrics on address:port in a thread; returns the bound port."""
        self.server, _thread = prometheus_client.start_http_server(
            port, addr=address, registry=self.registry)
        bound = self.server.server_address[1]
        self.url = "http://%s:%d/metrics" % (address, bound)
        LOG.info("Metrics at %s", self.url)
        return bound

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = self.url = None


class _StateCollector:
    """What the daemon keeps anyway, read when scraped (from the server's thread:
    only copies of the daemon's sets and dicts are iterated)."""

    def __init__(self, ops):
        self.ops = ops

    def describe(self):
        return []

    def collect(self):
        ops = self.ops
        per_store = {k: dict(v) for k, v in list(ops.stats.per_store.items())}
        stores = sorted(set(ops.namespace.store_dirs) | set(per_store))

        data = CounterMetricFamily("gsfs_store_bytes", "Image bytes written into (in) and "
                                   "read from (out) each store through the mount.",
                                   labels=["store", "direction"])
        uploads = CounterMetricFamily("gsfs_uploads", "Uploads that ended, per store and "
                                      "outcome (committed, failed).", labels=["store", "outcome"])
        deletes = CounterMetricFamily("gsfs_deletes", "Images deleted (unlink), per store.",
                                      labels=["store"])
        for store in stores:
            c = per_store.get(store, {})
            data.add_metric([store, "in"], c.get("bytes_in", 0))
            data.add_metric([store, "out"], c.get("bytes_out", 0))
            uploads.add_metric([store, "committed"], c.get("uploads", 0))
            uploads.add_metric([store, "failed"], c.get("failed_uploads", 0))
            deletes.add_metric([store], c.get("deletes", 0))
        yield from (data, uploads, deletes)

        failures = CounterMetricFamily(
            "gsfs_failures", "Failed requests and background jobs (uploads, commits, "
            "readahead), per store and operation.", labels=["store", "op"])
        for (store, op), n in sorted(list(ops.failures.counts.items())):
            failures.add_metric([store, op], n)
        yield failures

        up = GaugeMetricFamily("gsfs_uploads_in_flight", "Uploads under way, per store.",
                               labels=["store"])
        down = GaugeMetricFamily("gsfs_downloads_in_flight", "Files open for reading, per "
                                 "store.", labels=["store"])
        counts_up = {store: 0 for store in stores}
        counts_down = dict(counts_up)
        for session in list(ops.uploads):
            counts_up[session.store_id] = counts_up.get(session.store_id, 0) + 1
        for reader in list(ops.downloads):
            store = reader.image.store_dir.store_id
            counts_down[store] = counts_down.get(store, 0) + 1
        for store in sorted(counts_up):
            up.add_metric([store], counts_up[store])
        for store in sorted(counts_down):
            down.add_metric([store], counts_down[store])
        yield up
        yield down
        yield GaugeMetricFamily("gsfs_spool_bytes", "Bytes of spool files (read-write "
                                "images waiting for their upload).", value=ops.spool_used)
        memory = BUDGET.status()
        budget = GaugeMetricFamily("gsfs_memory_budget_bytes", "The uploads' memory budget "
                                   "(memory_mib): what they hold now, at most since the "
                                   "mount, and the limit.", labels=["kind"])
        for kind in ("used", "peak", "budget"):
            budget.add_metric([kind], memory["%s_bytes" % kind] or 0)
        yield budget
