"""The end of a run in numbers: who was provisioned, who failed where and why, how fast.

Pure functions over the phones' recorded times, so the maths is tested without a network.
Percentiles are nearest-rank (the value below which p% of the samples fall, always a sample
that happened), which is what an operator reading "p99 = 8 ms" expects.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from tools.simulate.phone import Phone, State

# (name in the report, start event, end event), in the flow's order.
METRICS = (
    ("subscribe_to_answer", "subscribe", "answer"),
    ("subscribe_to_notify", "subscribe", "notify"),
    ("notify_to_file", "notify", "file"),
    ("boot_to_provisioned", "boot", "provisioned"),
)
LABELS = {
    "subscribe_to_answer": "SUBSCRIBE->answer",
    "subscribe_to_notify": "SUBSCRIBE->NOTIFY",
    "notify_to_file": "NOTIFY->file",
    "boot_to_provisioned": "boot->provisioned",
}


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values`` (0 < p <= 100); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Latency:
    n: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> "Latency":
        return cls(len(values), percentile(values, 50), percentile(values, 95),
                   percentile(values, 99), max(values) if values else None)


@dataclass
class PhoneResult:
    mac: str
    vendor: str
    model: str
    ip: str
    port: int
    state: str
    provisioned: bool
    step: str | None
    reason: str | None
    attempts: int
    answers: list[int]
    notify_url: str | None
    notify_in_dialog: bool | None
    rejected_notifies: int
    times: dict[str, float | None]  # seconds since the run started
    resyncs: int = 0
    fetch_errors: list[str] = field(default_factory=list)  # connection failures, retried or not

    @classmethod
    def of(cls, phone: Phone, origin: float) -> "PhoneResult":
        # vars(), not asdict(): Times holds plain floats, and asdict's deep copy per phone adds up
        times = {k: (None if v is None else round(v - origin, 6)) for k, v in vars(phone.times).items()}
        p = phone.ident
        return cls(p.mac, p.vendor.name, p.model, p.ip, p.port, phone.state.value,
                   phone.state == State.PROVISIONED, phone.step, phone.reason, phone.attempts,
                   list(phone.answers), phone.notify_url, phone.notify_in_dialog,
                   phone.rejected_notifies, times, phone.resyncs, list(phone.fetch_errors))


@dataclass
class Report:
    phones: list[PhoneResult]
    duration: float  # seconds from the first boot to the end of the run
    latencies: dict[str, Latency] = field(default_factory=dict)

    @classmethod
    def of(cls, phones: Iterable[Phone], origin: float, end: float) -> "Report":
        phones = list(phones)
        latencies = {}
        for name, start, stop in METRICS:
            spans = [s for s in (p.times.span(start, stop) for p in phones) if s is not None]
            latencies[name] = Latency.of(spans)
        return cls([PhoneResult.of(p, origin) for p in phones], max(0.0, end - origin), latencies)

    @property
    def total(self) -> int:
        return len(self.phones)

    @property
    def provisioned(self) -> list[PhoneResult]:
        return [p for p in self.phones if p.provisioned]

    @property
    def failed(self) -> list[PhoneResult]:
        return [p for p in self.phones if not p.provisioned]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def provisioning_time(self) -> float | None:
        """Seconds from the first boot to the last phone provisioned."""
        ends = [p.times["provisioned"] for p in self.provisioned if p.times["provisioned"] is not None]
        boots = [p.times["boot"] for p in self.phones if p.times["boot"] is not None]
        if not ends or not boots:
            return None
        return max(ends) - min(boots)

    @property
    def throughput(self) -> float | None:
        """Phones provisioned per second, over the time they took."""
        span = self.provisioning_time
        if not span:
            return None
        return len(self.provisioned) / span

    def failures_by_step(self) -> dict[str, int]:
        return dict(Counter(p.step or "?" for p in self.failed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "provisioned": len(self.provisioned),
            "failed": len(self.failed),
            "duration_s": round(self.duration, 3),
            "provisioning_time_s": _round(self.provisioning_time, 3),
            "throughput_per_s": _round(self.throughput, 1),
            "latency_ms": {name: {k: (_ms(v) if k != "n" else v) for k, v in asdict(lat).items()}
                           for name, lat in self.latencies.items()},
            "failures_by_step": self.failures_by_step(),
            "failures": [{"mac": p.mac, "vendor": p.vendor, "model": p.model, "ip": p.ip,
                          "step": p.step, "reason": p.reason} for p in self.failed],
            "phones": [asdict(p) for p in self.phones],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def text(self, max_failures: int = 50) -> str:
        lines = [
            f"phones: {self.total}   provisioned: {len(self.provisioned)}   failed: {len(self.failed)}",
        ]
        span = self.provisioning_time
        if span is not None:
            lines.append(f"all provisioned in {span:.2f}s from the first boot; "
                         f"throughput {self.throughput or 0:.1f} phones/s")
        lines.append(f"{'latency (ms)':<20}{'n':>7}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}")
        for name, lat in self.latencies.items():
            lines.append(f"{LABELS[name]:<20}{lat.n:>7}" + "".join(
                f"{_fmt_ms(v):>10}" for v in (lat.p50, lat.p95, lat.p99, lat.max)))
        if self.failed:
            by_step = ", ".join(f"{k}: {v}" for k, v in sorted(self.failures_by_step().items()))
            lines.append(f"failed by step: {by_step}")
            for p in self.failed[:max_failures]:
                lines.append(f"  FAILED {p.mac} {p.vendor} {p.model} {p.ip}:{p.port} "
                             f"at {p.step}: {p.reason}")
            if len(self.failed) > max_failures:
                lines.append(f"  ... and {len(self.failed) - max_failures} more (--json lists all)")
        return "\n".join(lines)


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.2f}"


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)
