"""Prometheus text exposition of the status channel (``-o metrics_file=PATH``)."""


def render(status):
    lines = [
        "# HELP gsfs_store_bytes_total Bytes moved per store and direction.",
        "# TYPE gsfs_store_bytes_total counter",
    ]
    for store in status["stores"]:
        c = store["counters"]
        for direction in ("in", "out"):
            lines.append('gsfs_store_bytes_total{store="%s",direction="%s"} %d'
                         % (store["id"], direction, c.get("bytes_" + direction, 0)))
    lines += ["# HELP gsfs_store_errors_total Failed operations per store.",
              "# TYPE gsfs_store_errors_total counter"]
    for store in status["stores"]:
        lines.append('gsfs_store_errors_total{store="%s"} %d'
                     % (store["id"], store["counters"].get("errors", 0)))
    lines += ["# HELP gsfs_failures_total Failed requests and uploads per store and operation.",
              "# TYPE gsfs_failures_total counter"]
    for store_id, ops in sorted(status.get("failures", {}).items()):
        for op, n in sorted(ops.items()):
            lines.append('gsfs_failures_total{store="%s",op="%s"} %d' % (store_id, op, n))
    lines += ["# HELP gsfs_uploads_in_flight Uploads under way.",
              "# TYPE gsfs_uploads_in_flight gauge",
              "gsfs_uploads_in_flight %d" % len(status["uploads"]),
              "# HELP gsfs_spool_used_bytes Bytes held in the spool.",
              "# TYPE gsfs_spool_used_bytes gauge",
              "gsfs_spool_used_bytes %d" % status["spool_used_bytes"]]
    return "\n".join(lines) + "\n"
