"""When a phone gets a NOTIFY, and which one. Pure functions of the notifier's state and time.

- ``ua-profile`` (Plug and Play): a phone that booted (a discovery) within the window, whose
  files are published, gets the URL once per (MAC, Call-ID, revision). Both orders lead there:
  the files were ready before the boot (pre-staged: NOTIFY at once), or they are published while
  the phone is still within the window after its boot.
- ``check-sync`` (resync): a phone that was provisioned after its last boot, i.e. is up and
  running its config, gets one resync NOTIFY per new revision of that config.

The window also keeps a retained replay of an old discovery (after a restart of the notifier,
or with a fresh database) from notifying a phone that booted hours ago.

Enrolment (the fileserver's gate, docs/SECURITY.md) adds two rules to ``ua-profile``, none to
``check-sync``: no URL while ``published.enrolling`` is false (the fileserver would refuse it
anyway; sending it tells a forger the device exists and is worth racing), and one address per
enrolment epoch: once the epoch's URL went to one address, a discovery of the same MAC from
another is :class:`Held`. The notifier does not call that a conflict; the fileserver does, from
the same discovery. And a new epoch (re-armed, or a changed assignment) is not sent to a
discovery made before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container

from services.messages import Published

from notifier.state import Device, EpochAddress, Provision, SentKey

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
    epoch: int | None = None  # of the URL of a ua-profile, when the fileserver says


@dataclass(frozen=True)
class Held:
    """A ua-profile NOT sent: this epoch's URL already went to ``first``, and ``second`` asks."""

    mac: str
    epoch: int
    first: str
    second: str


def enrolling(published: Published) -> bool:
    """Whether the URL works (a fileserver older than enrolment does not say: the payload's
    default, true)."""
    return published.enrolling is not False


def _recent(device: Device, now: float, window: float) -> bool:
    return now - device.seen <= window


def _running(device: Device, provision: Provision | None) -> bool:
    """Provisioned since its last boot: the phone is up with a config of ours."""
    return provision is not None and provision.provisioned and provision.at >= device.seen


def _ua_profile(mac: str, device: Device, published: Published, sent: Container[SentKey],
                addressed: EpochAddress | None) -> Plan | Held | None:
    if not enrolling(published):
        return None
    key = SentKey(mac, device.discovered.call_id, published.revision, UA_PROFILE)
    if key in sent:
        return None
    epoch = published.epoch or None  # 0: a fileserver older than enrolment numbers none
    if (epoch is not None and addressed is not None and addressed.epoch == epoch
            and addressed.address != device.discovered.ip):
        # IPs only: a phone's source port changes across boots and NATs.
        return Held(mac, epoch, addressed.address, device.discovered.ip)
    return Plan(mac, UA_PROFILE, published.revision, published.url, key, epoch)


def after_discovery(mac: str, device: Device, published: Published | None,
                    provision: Provision | None, sent: Container[SentKey], now: float,
                    window: float, addressed: EpochAddress | None = None) -> Plan | Held | None:
    """A phone SUBSCRIBEd (or its retained discovery was replayed). ``addressed``: where the
    first ua-profile of the device's current epoch went, if one did."""
    if published is None or not _recent(device, now, window):
        return None
    if _running(device, provision):
        # A replayed discovery older than the phone's last download: it is not booting now.
        return None
    return _ua_profile(mac, device, published, sent, addressed)


def after_publish(mac: str, device: Device | None, published: Published,
                  previous: Published | None, provision: Provision | None,
                  sent: Container[SentKey], now: float, window: float,
                  addressed: EpochAddress | None = None) -> Plan | Held | None:
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
    if previous is not None and previous.epoch and published.epoch != previous.epoch:
        # A new enrolment epoch (re-armed, or the assignment changed): the last discovery is
        # older than it, and may be the very host a re-arm is meant to forget. Its URL waits
        # for a SUBSCRIBE made in the epoch.
        return None
    return _ua_profile(mac, device, published, sent, addressed)
