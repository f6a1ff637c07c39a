"""The notifier's settings: ``SETTINGS``, every one it reads besides the common ones."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from services import settings as s
from services.settings import Setting, parse_bool, parse_positive_float
from services.shard import MAX_SHARDS, Shard, parse_shard

IN_DIALOG = "in-dialog"
OUT_OF_DIALOG = "out-of-dialog"
_MODES = (IN_DIALOG, OUT_OF_DIALOG)


BY_VENDOR = "vendor"


# Asked once per NOTIFY, and the records do not change while the notifier runs; bounded, since
# the vendor is whatever a SUBSCRIBE's User-Agent made the listener say.
@functools.lru_cache(maxsize=64)
def _record_mode(vendor: str) -> str:
    """The NOTIFY form the vendor's record gives (generator/vendors/<vendor>/record.py)."""
    from generator.vendors import RECORDS

    record = RECORDS.get(vendor.strip().lower())
    return record.notify.dialog if record is not None else IN_DIALOG


@dataclass(frozen=True)
class DialogPolicy:
    """Which NOTIFY form each vendor gets: per-vendor overrides, else a default, else (default
    None, spelled ``vendor``) the form the vendor's record gives (Grandstream: out-of-dialog, as
    its guide's capture shows), else in-dialog."""

    default: str | None = None
    vendors: dict[str, str] = field(default_factory=dict)

    def mode_for(self, vendor: str) -> str:
        chosen = self.vendors.get(vendor.strip().lower(), self.default)
        return chosen if chosen is not None else _record_mode(vendor)

    def __str__(self) -> str:
        return ",".join([self.default or BY_VENDOR, *(f"{v}={m}" for v, m in sorted(self.vendors.items()))])


def parse_dialog_policy(text: str) -> DialogPolicy:
    """``vendor`` (each vendor's record), ``in-dialog`` or ``out-of-dialog``, optionally followed
    by ``vendor=mode`` overrides: ``vendor,snom=out-of-dialog``."""
    default: str | None = None
    vendors: dict[str, str] = {}
    items = [item.strip().lower() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError
    for item in items:
        vendor, eq, mode = item.partition("=")
        if not eq:
            if vendor == BY_VENDOR:
                default = None
                continue
            if vendor not in _MODES:
                raise ValueError
            default = vendor
            continue
        vendor, mode = vendor.strip(), mode.strip()
        if mode not in _MODES or not re.fullmatch(r"[a-z0-9][a-z0-9_.\-]*", vendor):
            raise ValueError
        vendors[vendor] = mode
    return DialogPolicy(default, vendors)


NOTIFY_WINDOW = Setting(
    "notify_window", "PNP_NOTIFY_WINDOW",
    "seconds after a discovery in which the phone still gets a NOTIFY (new boot or new files)",
    parse_positive_float, "a number of seconds > 0", 600.0,
)
NOTIFY_DIALOG = Setting(
    "notify_dialog", "PNP_NOTIFY_DIALOG",
    "NOTIFY form: vendor (the form each vendor's record gives: Grandstream out-of-dialog as its "
    "guide's capture, the others in-dialog), in-dialog (RFC 6665) or out-of-dialog, with vendor=mode "
    "overrides, e.g. vendor,snom=out-of-dialog",
    parse_dialog_policy, "vendor, in-dialog or out-of-dialog, then optional vendor=mode items, comma-separated",
    DialogPolicy(),
)
RESYNC_REBOOT = Setting(
    "resync_reboot", "PNP_RESYNC_REBOOT",
    "whether the check-sync NOTIFY to a provisioned phone asks it to reboot",
    parse_bool, "true or false", False,
)
NOTIFY_PORT = Setting(
    "notify_port", "PNP_NOTIFY_PORT",
    "local UDP port the NOTIFYs are sent from (0: any free port; never the listener's)",
    s.parse_whole(0, 65535), "0 or a port number 1-65535", 0,
)
SIP_T1 = Setting(
    "sip_t1", "PNP_SIP_T1",
    "SIP timer T1 in seconds: first retransmission; Timer F (give up) is 64*T1",
    parse_positive_float, "a number of seconds > 0", 0.5,
)
SIP_T2 = Setting(
    "sip_t2", "PNP_SIP_T2", "SIP timer T2 in seconds: the longest retransmission interval",
    parse_positive_float, "a number of seconds > 0 (and >= T1)", 4.0,
)

NOTIFIER_SHARD = Setting(
    "notifier_shard", "PNP_NOTIFIER_SHARD",
    "k/n: this notifier sends only for the MACs of shard k of n (crc32(mac) mod n = k-1); "
    "run n notifiers with 1/n ... n/n on one broker",
    parse_shard, f"k/n with 1 <= k <= n <= {MAX_SHARDS}, e.g. 1/2", Shard(),
)

SETTINGS = [s.SIP_INTERFACE, s.SIP_PORT, NOTIFY_WINDOW, NOTIFY_DIALOG, RESYNC_REBOOT, NOTIFY_PORT, SIP_T1, SIP_T2, NOTIFIER_SHARD]


def check(values: s.Settings) -> None:
    """Settings that are only wrong together; raises SettingError naming the one to change."""
    if values.sip_t2 < values.sip_t1:
        raise s.SettingError(SIP_T2, str(values.sip_t2), f"must not be below {SIP_T1.env} ({values.sip_t1})")
    if values.notify_port and values.notify_port == values.sip_port:
        raise s.SettingError(NOTIFY_PORT, str(values.notify_port), f"it is the listener's port "
                             f"({s.SIP_PORT.env}): the phones' 200 OK would land in the listener")
