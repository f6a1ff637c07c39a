"""When a phone gets a NOTIFY, and which one. Pure functions of the notifier's state and time.

- ``ua-profile`` (Plug and Play): a phone that booted (a discovery) within the window, whose
  files are published, gets the URL once per (MAC, Call-ID, revision). Both orders lead there:
  the files were ready before the boot (pre-staged: NOTIFY at once), or they are published while
  the phone is still within the window after its boot.
- ``check-sync`` (resync): a phone that was provisioned after its last boot, i.e. is up and
  running its config, gets one resync NOTIFY per new revision of that config.

The window also keeps a retained replay of an old discovery (after a restart of the notifier,
or with a fresh database) from notifying a phone that booted hours ago.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container

from services.messages import Published

from notifier.state import Device, Provision, SentKey

UA_PROFILE = "ua-profile"
CHECK_SYNC = "check-sync"


@dataclass(frozen=True)
class Plan:
    """A NOTIFY to send."""

    mac: str
    kind: str
    revision: int
    url: str
    key: SentKey


def _recent(device: Device, now: float, window: float) -> bool:
    return now - device.seen <= window


def _running(device: Device, provision: Provision | None) -> bool:
    """Provisioned since its last boot: the phone is up with a config of ours."""
    return provision is not None and provision.provisioned and provision.at >= device.seen


def _ua_profile(mac: str, device: Device, published: Published, sent: Container[SentKey]) -> Plan | None:
    key = SentKey(mac, device.discovered.call_id, published.revision, UA_PROFILE)
    if key in sent:
        return None
    return Plan(mac, UA_PROFILE, published.revision, published.url, key)


def after_discovery(mac: str, device: Device, published: Published | None,
                    provision: Provision | None, sent: Container[SentKey], now: float,
                    window: float) -> Plan | None:
    """A phone SUBSCRIBEd (or its retained discovery was replayed)."""
    if published is None or not _recent(device, now, window):
        return None
    if _running(device, provision):
        # A replayed discovery older than the phone's last download: it is not booting now.
        return None
    return _ua_profile(mac, device, published, sent)


def after_publish(mac: str, device: Device | None, published: Published,
                  previous: Published | None, provision: Provision | None,
                  sent: Container[SentKey], now: float, window: float) -> Plan | None:
    """The phone's files were (re)published."""
    if device is None:
        return None  # never seen: no address to send to; its first SUBSCRIBE will do
    if _running(device, provision):
        assert provision is not None
        has = provision.revision if provision.revision is not None else (
            previous.revision if previous is not None else published.revision)
        if published.revision == has:
            return None
        key = SentKey(mac, "", published.revision, CHECK_SYNC)
        if key in sent:
            return None
        return Plan(mac, CHECK_SYNC, published.revision, published.url, key)
    if not _recent(device, now, window):
        return None
    return _ua_profile(mac, device, published, sent)
