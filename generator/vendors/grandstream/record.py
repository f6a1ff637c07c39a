"""Grandstream GRP261x: every fact the generator, listener and notifier use, with its source.

Sources (facts recorded, nothing copied):
- TPL: Grandstream's configuration template for the GRP261x, firmware 1.0.5.15, as stored in
  wazo-platform/wazo-provd-plugins at plugins/wazo-grandstream/docs/config-template/
  grp261x_config_1.0.5.15.txt (commit 36197dbd). Line numbers below refer to that file.
- GUIDE: Grandstream's "GRP26XX Auto-configuration Plug and Play Guide" (/work/shared/seed/
  grp26xx-plug-and-play-guide.txt), Figures 1 and 2.
- WAZO_GS: wazo-platform/wazo-provd-plugins plugins/wazo_grandstream/common/common.py and
  templates/base.tpl (file name cfg{mac}.xml, the XML form).
- DHCP: wazo-platform/wazo-provd-plugins dhcp/dhcp/dhcpd_update/grandstream.conf (MAC prefixes).
- FPBX: fusionpbx/fusionpbx resources/templates/provision/grandstream/grp2612/{$mac}.xml (lines
  2004-2007): the config server's HTTP user and password filled with the provisioning credentials.
"""

from __future__ import annotations

import re

from generator.vendors.record import (
    BOOL01, HOST, OUT_OF_DIALOG, TEXT, Model, Notify, Record, Resync, Setting,
)

TPL = "[TPL]"
GUIDE = "[GUIDE]"
WAZO_GS = "[WAZO_GS]"
DHCP = "[DHCP]"
FPBX = "[FPBX]"

# accounts; VPKs (virtual keys on the screen), of which the first `fixed` are the fixed ones
# (line keys); MPKs (physical keys beside the second screen). TPL lines 8530-13170: one VPK block
# per model ("For GRP2616" ...), "fixed VPK" headings; MPK 1-24 "GRP2614/GRP2616 only".
MODELS = {
    "GRP2612": Model(2, 16, f"{TPL}: account 2 is the last for GRP2612; 16 VPKs, 4 fixed",
                     {"vpk": 16, "fixed": 4, "mpk": 0}),
    "GRP2613": Model(3, 24, f"{TPL}: 'Account 3 GRP2613/...'; 24 VPKs, 6 fixed", {"vpk": 24, "fixed": 6, "mpk": 0}),
    "GRP2614": Model(4, 40, f"{TPL}: 'Account 4 GRP2614/...'; 16 VPKs, 4 fixed; MPK 1-24",
                     {"vpk": 16, "fixed": 4, "mpk": 24}),
    "GRP2615": Model(5, 40, f"{TPL}: 'Account 5 GRP2615/GRP2616 only'; 40 VPKs, 5 fixed",
                     {"vpk": 40, "fixed": 5, "mpk": 0}),
    "GRP2616": Model(6, 48, f"{TPL}: 'Account 6 GRP2616 only'; 24 VPKs, 6 fixed; MPK 1-24",
                     {"vpk": 24, "fixed": 6, "mpk": 24}),
}

# Account n's P-values (TPL "Account n/General Settings", ".../SIP Settings/Basic Settings",
# ".../Audio Settings"). Account 1 has its own numbers; 2-6 count from a base.
ACCOUNT_1 = {"active": 271, "name": 270, "server": 47, "proxy": 48, "user_id": 35, "auth_id": 36,
             "password": 34, "display_name": 3, "transport": 130}
ACCOUNT_1_VOCODERS = (57, 58, 59, 60, 61, 62, 46, 98)
ACCOUNT_BASE = {2: 400, 3: 500, 4: 600, 5: 1700, 6: 1800}
ACCOUNT_N = {"active": 1, "name": 17, "server": 2, "proxy": 3, "user_id": 4, "auth_id": 5,
             "password": 6, "display_name": 7, "transport": 48}
ACCOUNT_N_VOCODERS = tuple(range(51, 59))
# "Allow SIP Reset": P26015, P26115 ... P26515 (TPL line 249 ff., default 0). Grandstream's HT81x
# (1.0.15.4, "Reset using SIP NOTIFY") and GXV34x0 admin guides: it lets a NOTIFY with
# "Event: reset" factory-reset the device; it has nothing to do with check-sync. Written 0.
SIP_RESET = {n: 26015 + 100 * (n - 1) for n in range(1, 7)}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}  # TPL P130: 0 UDP, 1 TCP, 2 TLS/TCP
VOCODER = {"pcmu": 0, "pcma": 8, "g722": 9, "g729": 18, "opus": 123}  # TPL P57: vocoder codes
UPGRADE_VIA = {"tftp": 0, "http": 1, "https": 2}  # TPL P212 and P6767: 0 TFTP, 1 HTTP, 2 HTTPS
# Key modes (TPL VPK/MPK blocks): None -1, SpeedDial 0, BLF 1, DialDTMF 5, VoiceMail 6,
# Transfer 8, CallPark 9, Intercom 10, Default (the account's line) 31.
KEY_MODE = {"none": -1, "speed_dial": 0, "blf": 1, "dtmf": 5, "voicemail": 6, "transfer": 8,
            "park": 9, "intercom": 10, "line": 31}
# Dynamic VPKs take 0-30; "none" is written as the mode string the template also accepts.
DYNAMIC_NONE = "none"

# TPL P1362 "Display Language" values; BCP 47 tag -> value.
LANGUAGES = {"ar": "ar", "cs": "cz", "de": "de", "en": "en", "es": "es", "fr": "fr", "he": "he",
             "hr": "hr", "hu": "hu", "it": "it", "ja": "ja", "ko": "ko", "lv": "lv", "nl": "nl",
             "pl": "pl", "pt": "pt", "ru": "ru", "sl": "sl", "sv": "se", "tr": "tr", "zh": "zh",
             "zh-tw": "zh-tw", "zh-hant": "zh-tw", "zh-cn": "zh", "zh-hans": "zh"}

# TPL P64 "Time Zone" list (lines 8115-8179): (the list's own GMT offset in minutes, value).
# A zone whose rule equals an entry is written as that entry; any other as "customize" with
# its POSIX string in P246 (at most 64 characters).
TIME_ZONES = (
    (-720, "TAZ+12"), (-660, "TAB+11"), (-600, "HAW10"), (-540, "AKST9AKDT"), (-480, "PST8PDT"),
    (-480, "PST8PDT,M3.2.0,M11.1.0"), (-420, "MST7MDT"), (-420, "MST7"), (-420, "MST7MDT,M4.1.0,M10.5.0"),
    (-360, "CST6CDT"), (-360, "CST+6"), (-360, "CST6CDT,M4.1.0,M10.5.0"), (-300, "EST5EDT"), (-300, "EST5"),
    (-270, "TZf+4:30"), (-240, "AST4ADT"), (-240, "AST4ADT,M3.2.0,M11.1.0"),
    (-240, "CLT4CLST,M9.1.6/24:00,M4.1.6/24:00"),
    (-210, "NST+3:30NDT+2:30,M3.2.0/02:00:00,M11.1.0/02:00:00"), (-180, "TZK+3"),
    (-180, "BRST+3BRDT+2,M11.1.0,M2.3.0"), (-120, "UTC+3"), (-120, "TZL+2"), (-60, "TZM+1"),
    (0, "TZM+1TZN+0,M3.4.6/24:00:00,M10.4.0/1:00:00"), (0, "TZN+0"),
    (0, "GMT+0BST-1,M3.5.0/01:00:00,M10.5.0/02:00:00"), (0, "WET-0WEST-1,M3.5.0/01:00:00,M10.5.0/02:00:00"),
    (0, "GMT+0IST-1,M3.5.0/01:00:00,M10.5.0/02:00:00"), (60, "CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00"),
    (120, "TZP-2"), (120, "EET-2EEST-3,M3.4.5/02:00:00,M10.4.0/02:00:00"),
    (120, "EET-2EEST-3,M3.5.0/03:00:00,M10.4.0/04:00:00"), (120, "EET-2EEST,M3.5.0/3,M10.5.0/4"),
    (180, "TZQ-3"), (180, "MSK-3"), (180, "IRST-3:30IRDT-4:30,M3.3.5/24:00:00,M9.3.0/24:00:00"),
    (240, "TZR-4"), (300, "TZS-5"), (330, "TZT-5:30"), (345, "TZU-5:45"), (360, "TZV-6"), (390, "TZW-6:30"),
    (420, "TZX-7"), (420, "WIB-7"), (480, "TZY-8"), (480, "SGT-8"), (480, "ULAT-8"), (480, "WST-8"),
    (540, "TZZ-9"), (570, "CST-9:30CDT-10:30,M10.1.0/02:00:00,M4.1.0/03:00:00"), (570, "CST-9:30"),
    (600, "TZb-10"), (600, "EST-10EDT-11,M10.1.0/02:00:00,M4.1.0/03:00:00"), (600, "EST-10"),
    (660, "TZc-11"), (720, "NZST-12NZDT-13,M9.4.0/02:00:00,M4.1.0/03:00:00"),
    (720, "FJT-12FJST-13,M11.2.0/02:00:00,M1.2.0/03:00:00"), (780, "TZe-13"),
)
P246_MAX = 64


def _ps(numbers) -> str:
    return "P(?:" + "|".join(str(n) for n in sorted(set(numbers))) + ")"


def _account(what: str) -> list[int]:
    return [ACCOUNT_1[what]] + [base + ACCOUNT_N[what] for base in ACCOUNT_BASE.values()]


MPK_BASES = ([(323 + i, 301 + 3 * i) for i in range(7)]  # MPK 1-7: mode P323+i, then 3 in a row
             + [(353, 354)])  # MPK 8: P353-P356


def mpk_p(m: int) -> tuple[int, int, int, int]:
    """(mode, account, description, value) of MPK m (TPL lines 12395-13170)."""
    if m <= 8:
        mode, first = MPK_BASES[m - 1]
        return mode, first, first + 1, first + 2
    if m <= 18:
        base = 357 + 4 * (m - 9)
    else:
        base = 1440 + 4 * (m - 19)
    return base, base + 1, base + 2, base + 3


def vpk_p(n: int) -> tuple[int, int, int, int]:
    """(mode, account, description, value) of VPK n: 1-6 fixed numbers, 7+ from P23800."""
    if n <= 6:
        return 1363 + 2 * (n - 1), 1364 + 2 * (n - 1), 1465 + 2 * (n - 1), 1466 + 2 * (n - 1)
    base = 23800 + 4 * (n - 7)
    return base, base + 1, base + 2, base + 3


_ALL_VPK = [vpk_p(n) for n in range(1, 41)]
_ALL_MPK = [mpk_p(m) for m in range(1, 25)]
_KEY_ACCOUNT = "[0-5]"

SETTINGS = (
    Setting(_ps(_account("active")), "account active", BOOL01, f"{TPL}: P271, P401, P501, P601, P1701, P1801"),
    Setting(_ps(_account("name")), "account name", TEXT, f"{TPL}: P270, P417, P517, P617, P1717, P1817"),
    Setting(_ps(_account("server")), "SIP server (host or host:port; empty on an account not used)",
            r"[A-Za-z0-9_.:\[\]-]*",
            f"{TPL}: P47, P402 ..."),
    Setting(_ps(_account("proxy")), "outbound proxy", HOST, f"{TPL}: P48, P403 ..."),
    Setting(_ps(_account("user_id")), "SIP user ID", TEXT, f"{TPL}: P35, P404 ..."),
    Setting(_ps(_account("auth_id")), "authenticate ID", TEXT, f"{TPL}: P36, P405 ..."),
    Setting(_ps(_account("password")), "authenticate password", TEXT, f"{TPL}: P34, P406 ..."),
    Setting(_ps(_account("display_name")), "name (display name)", TEXT, f"{TPL}: P3, P407 ..."),
    Setting(_ps(_account("transport")), "SIP transport: 0 UDP, 1 TCP, 2 TLS/TCP", "[012]",
            f"{TPL}: P130, P448, P548, P648, P1748, P1848"),
    Setting(_ps(list(ACCOUNT_1_VOCODERS) + [b + n for b in ACCOUNT_BASE.values() for n in ACCOUNT_N_VOCODERS]),
            "preferred vocoder, choices 1-8: 0 PCMU, 8 PCMA, 9 G.722, 18 G.729A/B, 123 OPUS", "0|8|9|18|123",
            f"{TPL}: P57-P62, P46, P98; account n base+51..58"),
    Setting(_ps(SIP_RESET.values()), "allow SIP reset (a NOTIFY 'Event: reset' factory-resets the phone): 0 no (written), 1 yes", "0",
            f"{TPL}: 'Allow SIP Reset' P26015, P26115 ... P26515; HT81x admin guide 1.0.15.4 'Reset using SIP NOTIFY'"),
    Setting(_ps(p[0] for p in _ALL_VPK[:6]), "VPK 1-6 key mode: fixed on the model (its first `fixed` VPKs): "
            "-1 none ... 31 default (line); dynamic: 0-30 or none",
            "none|-1|0|1|5|6|8|9|10|31", f"{TPL}: fixed VPK 'Number: -1 - 32', dynamic 'Number: 0 - 30' (the "
            "same P-values are fixed on one model and dynamic on another)"),
    Setting(_ps(p[0] for p in _ALL_VPK[6:]), "dynamic VPK key mode: 0-30, or none",
            "none|0|1|5|6|8|9|10", f"{TPL}: dynamic VPK 'Number: 0 - 30'; mode strings accepted"),
    Setting(_ps(p[1] for p in _ALL_VPK), "VPK account: 0 = account 1", _KEY_ACCOUNT, f"{TPL}: VPK 'Account'"),
    Setting(_ps(p[2] for p in _ALL_VPK[:6]), "VPK 1-6 description (at most 32 characters on a fixed VPK)", TEXT[:-1] + "{0,32}",
            f"{TPL}: 'Description. Max length allowed is 32 characters'"),
    Setting(_ps(p[3] for p in _ALL_VPK[:6]), "VPK 1-6 value (at most 64 characters on a fixed VPK)", TEXT[:-1] + "{0,64}",
            f"{TPL}: 'Value. Max length allowed is 64 characters'"),
    Setting(_ps(p[i] for p in _ALL_VPK[6:] for i in (2, 3)), "dynamic VPK description, value", TEXT,
            f"{TPL}: dynamic VPK 'Description', 'Value'"),
    Setting(_ps(p[0] for p in _ALL_MPK), "MPK key mode: -1 none ... 29", "-1|0|1|5|6|8|9|10",
            f"{TPL}: MPK 'Key Mode. Number: -1 - 29'"),
    Setting(_ps(p[1] for p in _ALL_MPK), "MPK account: 0 = account 1", _KEY_ACCOUNT, f"{TPL}: MPK 'Account'"),
    Setting(_ps(p[i] for p in _ALL_MPK for i in (2, 3)), "MPK description, value (at most 256 characters)",
            TEXT[:-1] + "{0,256}", f"{TPL}: MPK 'Max length allowed is 256 characters'"),
    Setting("P237", "config server path (host/path, no scheme)", r"[A-Za-z0-9_.:/\[\]~%@+=?&-]+",
            f"{TPL}: P237 'Config Server Path'"),
    Setting("P212", "config upgrade via: 0 TFTP, 1 HTTP, 2 HTTPS", "[012]", f"{TPL}: P212"),
    Setting("P1360", "config server HTTP/HTTPS user name (ours: the MAC)", "[0-9a-f]{12}",
            f"{TPL}: P1360 'Config HTTP/HTTPS User Name' (line 6613); {FPBX} provisioning.config.username"),
    Setting("P1361", "config server HTTP/HTTPS password (ours: per device, random)", "[A-Za-z0-9_-]{16,64}",
            f"{TPL}: P1361 'Config HTTP/HTTPS Password' (line 6617); {FPBX} provisioning.config.password"),
    Setting("P192", "firmware server path (host/path, no scheme)", r"[A-Za-z0-9_.:/\[\]~%@+=?&-]+",
            f"{TPL}: P192 'Firmware Server Path'"),
    Setting("P6767", "firmware upgrade via: 0 TFTP, 1 HTTP, 2 HTTPS", "[012]", f"{TPL}: P6767"),
    Setting("P145", "DHCP option 43/66 may override the config server: 0 no", "0", f"{TPL}: P145 (default 1)"),
    Setting("P194", "automatic upgrade check: 0 no, 1 every P193 minutes", BOOL01, f"{TPL}: P194"),
    Setting("P193", "check every so many minutes (60-86400)", r"[0-9]{2,5}", f"{TPL}: P193 'Number: 60-86400'"),
    Setting("P64", "time zone: a value of the template's list, or customize",
            "|".join(re.escape(v) for _, v in TIME_ZONES) + "|customize", f"{TPL}: P64 list"),
    Setting("P246", "self-defined time zone (POSIX TZ, at most 64 characters)", r"[A-Za-z0-9<>+\-,./:]{1,64}",
            f"{TPL}: P246"),
    Setting("P143", "DHCP option 2 may override the time zone: 0 no", "0", f"{TPL}: P143 (default 1)"),
    Setting("P30", "NTP server", HOST, f"{TPL}: P30"),
    Setting("P2", "admin password (a-z, A-Z, 0-9)", "[a-zA-Z0-9]*", f"{TPL}: P2 'String: a-z, A-Z, 0-9'"),
    Setting("P1362", "display language", "|".join(sorted(set(LANGUAGES.values()))), f"{TPL}: P1362"),
    Setting("P4428", "disable SIP NOTIFY authentication: 0 no (the phone challenges a NOTIFY)", "0",
            f"{TPL}: P4428 (default 0)"),
)

RECORD = Record(
    sources={
        "TPL": "Grandstream's configuration template for the GRP261x, firmware 1.0.5.15: wazo-platform/wazo-provd-plugins plugins/wazo-grandstream/docs/config-template/grp261x_config_1.0.5.15.txt (commit 36197dbd)",
        "GUIDE": "Grandstream, GRP26XX Auto-configuration Plug and Play Guide (/work/shared/seed/grp26xx-plug-and-play-guide.txt), Figures 1 and 2",
        "WAZO_GS": "wazo-platform/wazo-provd-plugins plugins/wazo_grandstream/common/common.py and common/templates/base.tpl",
        "DHCP": "wazo-platform/wazo-provd-plugins dhcp/dhcp/dhcpd_update/grandstream.conf",
        "FPBX": "fusionpbx/fusionpbx resources/templates/provision/grandstream/grp2612/{$mac}.xml (commit c7a00dcb)",
    },
    vendor="grandstream",
    family="grp26xx",
    ouis={"000b82": DHCP, "c074ad": DHCP, "ec74d7": DHCP},
    models=MODELS,
    files={"cfg{mac}.xml": f"<gs_provision version=\"1\"><mac/><config version=\"1\"> with P-values; {WAZO_GS}"},
    notify=Notify(OUT_OF_DIALOG, "application/url", "directory",
                  f"{GUIDE} Figure 2: out-of-dialog NOTIFY (fresh Call-ID, untagged To), Content-Type "
                  "application/url, body a directory URL ending in /", True),
    resync=Resync("check-sync",
                  "nothing to switch on; the phone challenges the NOTIFY with 401 unless P4428 = 1, "
                  "which is kept 0: the notifier answers with account 1's credentials (P36 or P35, P34)",
                  f"{TPL}: P4428; HT81x admin guide 1.0.15.4 'Reset using SIP NOTIFY'"),
    settings=SETTINGS,
    languages=LANGUAGES,
    languages_source=f"{TPL}: P1362 values (cz for Czech, se for Swedish, zh-tw)",
    unconfirmed=(
        "HTTP credentials for the config server (P1360/P1361): whether the firmware answers a Digest challenge or only Basic is not in a stored source (the fileserver asks for Digest)",
        "GRP2601/2602/2603/2604, GRP2624, GRP2634: the guide lists them as Plug and Play phones, but no "
        "stored source gives their key counts or P-values; they are not in the table (no_template), "
        "an operator can add them with their own template and vendor_settings",
        "Key modes beyond those listed, and VPK/MPK value syntax per mode (e.g. BLF value = extension): "
        "the template names the modes but not the value syntax",
    ),
)
