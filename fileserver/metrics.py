"""Counters of the HTTP side, rendered in the Prometheus text exposition format."""

from __future__ import annotations

from collections import Counter
from typing import Mapping


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter = Counter()  # status -> count
        self.bytes_sent = 0

    def observe(self, status: int, body_bytes: int) -> None:
        self.requests[status] += 1
        self.bytes_sent += body_bytes

    def render(self, gauges: Mapping[str, tuple[str, float]]) -> bytes:
        """``gauges``: name -> (help, value), for what the service knows beyond requests."""
        lines = [
            "# HELP pnp_fileserver_requests_total HTTP requests answered, by status code.",
            "# TYPE pnp_fileserver_requests_total counter",
        ]
        for status in sorted(self.requests):
            lines.append(f'pnp_fileserver_requests_total{{code="{status}"}} {self.requests[status]}')
        lines += [
            "# HELP pnp_fileserver_sent_bytes_total Bytes of file bodies sent.",
            "# TYPE pnp_fileserver_sent_bytes_total counter",
            f"pnp_fileserver_sent_bytes_total {self.bytes_sent}",
        ]
        for name, (help_text, value) in sorted(gauges.items()):
            lines += [f"# HELP pnp_fileserver_{name} {help_text}", f"# TYPE pnp_fileserver_{name} gauge",
                      f"pnp_fileserver_{name} {value:g}"]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def counters(self) -> dict[str, int]:
        out = {f"http_{status}": n for status, n in self.requests.items()}
        out["http_bytes_sent"] = self.bytes_sent
        return out
