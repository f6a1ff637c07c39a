"""A fleet of simulated Plug and Play phones (``pnp simulate``), importable for tests.

    from tools.simulate import simulate
    report = yield simulate(count=10, models=["GRP2614", "T46S"], sip_port=port)
    assert report.ok, report.text()

``phone`` is the firmware (sans-I/O), ``vendors`` the per-vendor wire shapes, ``fleet`` the
sockets and time, ``report`` the numbers, ``staging`` the ``--assign`` pre-staging.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer

from tools.simulate.fleet import Fleet, PlanError, Progress, plan, raise_file_limit
from tools.simulate.phone import Phone, State, Timing
from tools.simulate.report import Report, percentile
from tools.simulate.vendors import VENDORS, Identity, find_model

__all__ = ["simulate", "Fleet", "Phone", "Timing", "Report", "Progress", "plan", "PlanError",
           "Identity", "VENDORS", "find_model", "percentile", "State", "raise_file_limit"]


@defer.inlineCallbacks
def simulate(count: int = 1, models: Sequence[str] = ("GRP2614",), *, sip_port: int,
             boot_over: float = 0.0, timeout: float = 60.0, timing: Timing | None = None,
             address_start: str = "127.0.0.2", mac_start: int = 1, phone_port: int | None = None,
             assign_url: Any = None, topic_prefix: str = "pnp", sip_server: str = "pbx.example.com",
             wait_published: float = 30.0, seed: int | None = None, reactor: Any = None,
             on_progress: Any = None, linger: float = 0.0,
             credentials: tuple[str, str] | None = None) -> Any:
    """Boot ``count`` phones against the multicast group on ``sip_port`` and fire with the
    :class:`Report`. With ``assign_url`` (an MqttUrl or ``mqtt://`` string) every phone is first
    pre-staged with an assignment (vendor, model, one account) on that broker. ``linger`` keeps
    the phones up that long after the last one is done, answering check-sync resyncs."""
    idents = plan(count, models, address_start, mac_start, phone_port)
    if assign_url is not None:
        from services.settings import parse_mqtt_url
        from tools.simulate.staging import stage

        url = parse_mqtt_url(assign_url) if isinstance(assign_url, str) else assign_url
        yield stage(idents, url, topic_prefix, sip_server=sip_server,
                    wait_published=wait_published, reactor=reactor)
    fleet = Fleet(idents, sip_port, timing or Timing(), boot_over=boot_over, timeout=timeout,
                  seed=seed, reactor=reactor, on_progress=on_progress, linger=linger,
                  credentials=credentials)
    report = yield fleet.run()
    return report
