"""Yealink T4xS/T5x/T33G: every fact the generator, listener and notifier use, with its source.

Sources (facts recorded, nothing copied), all in wazo-platform/wazo-provd-plugins unless said:
- V86: plugins/wazo_yealink/v86/templates/base.tpl and v86/common.py (@2321a3f3): account keys,
  codec enables, line key types, SIP accounts and line keys per model, locales.
- V87: plugins/wazo_yealink/v87/templates/base.tpl (@2321a3f3) lines 350-351:
  static.auto_provision.server.username and .password, the provisioning server's HTTP credentials.
- YL_COMMON: plugins/wazo_yealink/common/common.py: time zone keys and their value format,
  KNOWN_MAC_PREFIXES.
- V81: plugins/xivo-yealink/v81/entry.py (@a748577b): common file per model, y000000000068.cfg
  T41S, ...067 T42S, ...066 T46S, ...065 T48S.
- V84: plugins/wazo_yealink/v84/entry.py (@921a5e69): ...095 T53W(T53), ...096 T54W, ...097 T57W.
- V85: plugins/xivo-yealink/v85/entry.py (@fded2183): ...123/124/127 for the T3x family.
- FPBX: fusionpbx/fusionpbx resources/templates/provision/yealink/t54w/ ({$mac}.cfg and
  y000000000096.cfg): codec priority, outbound proxy, auto-provision repeat, DST keys,
  static.auto_provision.server.username/.password (y000000000096.cfg lines 168-169).
- DHCP: dhcp/dhcp/dhcpd_update/yealink.conf (MAC prefixes).
"""

from __future__ import annotations

from generator.vendors.record import BOOL01, HOST, IN_DIALOG, TEXT, Model, Notify, Record, Resync, Setting

V86 = "[V86]"
V87 = "[V87]"
YL_COMMON = "[YL_COMMON]"
V81 = "[V81]"
V84 = "[V84]"
V85 = "[V85]"
FPBX = "[FPBX]"
DHCP = "[DHCP]"

# accounts, line keys (V86 _NB_SIP_ACCOUNTS, _NB_LINEKEY); common file id (V81/V84/V85).
MODELS = {
    "T33G": Model(4, 12, f"{V86}; common file id 124: {V85} lists 123/124/127 for the T3x family without "
                  "saying which is the T33G's (124 is its firmware's first number)", {"hw": 124}),
    "T41S": Model(6, 15, f"{V86}; {V81}", {"hw": 68}),
    "T42S": Model(12, 15, f"{V86}; {V81}", {"hw": 67}),
    "T46S": Model(16, 27, f"{V86}; {V81}", {"hw": 66}),
    "T48S": Model(16, 29, f"{V86}; {V81}", {"hw": 65}),
    "T53": Model(12, 21, f"{V86}; {V84}", {"hw": 95}),
    "T53W": Model(12, 21, f"{V86}; {V84}", {"hw": 95}),
    "T54W": Model(16, 27, f"{V86}; {V84}", {"hw": 96}),
    "T57W": Model(16, 29, f"{V86}; {V84}", {"hw": 97}),
}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 2}  # V86 _SIP_TRANSPORT; FPBX transport_type
CODECS = ("pcmu", "pcma", "g722", "g729", "opus")  # V86 codec.<name>.enable; FPBX .priority
# V86 funckey generator: 0 none, 10 park, 11 DTMF (its recording key sends *3), 13 speed dial,
# 15 line, 16 BLF. Other types (transfer, voicemail, intercom) have no stored source.
KEY_TYPE = {"none": 0, "park": 10, "dtmf": 11, "speed_dial": 13, "line": 15, "blf": 16}
NULL = "%NULL%"  # V86: resets a key to its factory value

# V86 _LOCALE: lang.gui / lang.wui values.
LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian"}

_ACC = r"account\.(?:[1-9]|1[0-6])\."
_KEY = r"linekey\.(?:[1-9]|[12][0-9])\."
_URL = r"(?:tftp|https?|ftp)://[A-Za-z0-9_.:/\[\]~%@+=?&-]+"
_NULLABLE = f"|{NULL}"

SETTINGS = (
    Setting(_ACC + "enable", "account enabled", BOOL01, V86),
    Setting(_ACC + r"(?:label|display_name|auth_name|user_name|password)", "label, display name, register "
            "name, user name, password", TEXT, f"{V86} (display_name: its reset branch)"),
    Setting(_ACC + r"sip_server\.1\.address", "SIP server", HOST + _NULLABLE, V86),
    Setting(_ACC + r"sip_server\.1\.port", "SIP server port", r"[0-9]{1,5}" + _NULLABLE, V86),
    Setting(_ACC + r"sip_server\.1\.transport_type", "transport: 0 UDP, 1 TCP, 2 TLS", "[012]" + _NULLABLE,
            f"{V86}; {FPBX}"),
    Setting(_ACC + "outbound_proxy_enable", "use the outbound proxy", BOOL01, FPBX),
    Setting(_ACC + r"outbound_proxy\.1\.address", "outbound proxy", HOST, FPBX),
    Setting(_ACC + r"codec\.(?:pcmu|pcma|g722|g729|opus)\.enable", "codec enabled", BOOL01, V86),
    Setting(_ACC + r"codec\.(?:pcmu|pcma|g722|g729|opus)\.priority", "codec priority (1 first, 0 unused)",
            r"[0-9]", FPBX),
    Setting(_KEY + "type", "line key type: 0 none, 10 park, 11 DTMF, 13 speed dial, 15 line, 16 BLF",
            "0|10|11|13|15|16", V86),
    Setting(_KEY + "line", "line key account (1 = account 1)", r"(?:[1-9]|1[0-6])" + _NULLABLE, V86),
    Setting(_KEY + r"(?:value|label)", "line key value, label", TEXT, V86),
    Setting(r"static\.auto_provision\.server\.url", "provisioning server URL", _URL, f"{V86}; {FPBX}"),
    Setting(r"static\.auto_provision\.server\.username", "provisioning server HTTP user (ours: the MAC)",
            "[0-9a-f]{12}", f"{V87} ('Autop URL' section); {FPBX}"),
    Setting(r"static\.auto_provision\.server\.password", "provisioning server HTTP password (ours: per device, "
            "random)", "[A-Za-z0-9_-]{16,64}", f"{V87} ('Autop URL' section); {FPBX}"),
    Setting(r"static\.auto_provision\.repeat\.enable", "check the server periodically", BOOL01, FPBX),
    Setting(r"static\.auto_provision\.repeat\.minutes", "minutes between checks", r"[0-9]{1,5}",
            f"{FPBX} (no range given)"),
    Setting(r"static\.firmware\.url", "firmware file URL (the .rom file itself)", _URL[:-1] + r"+\.rom",
            f"{V86}: {{server}}/firmware/{{model's .rom file}}"),
    Setting(r"local_time\.time_zone", "UTC offset of standard time (+1, -5, +5:30)", r"[+-](?:[0-9]|1[0-4])(?::[0-9]{2})?",
            f"{YL_COMMON}; +5:30 form: public provisioning scripts (not in a Yealink source)"),
    Setting(r"local_time\.summer_time", "daylight saving: 0 off, 1 by the rules below", BOOL01, YL_COMMON),
    Setting(r"local_time\.dst_time_type", "DST rule type: 1 month/week/weekday/hour", "1", YL_COMMON),
    Setting(r"local_time\.(?:start|end)_time", "DST start/end: month/week/weekday (1 = Sunday)/hour",
            r"(?:[1-9]|1[0-2])/[1-5]/[1-7]/(?:[0-9]|1[0-9]|2[0-3])", YL_COMMON),
    Setting(r"local_time\.offset_time", "DST offset in minutes", r"[0-9]{1,3}", YL_COMMON),
    Setting(r"local_time\.ntp_server1", "NTP server", HOST, f"{V86}; {FPBX}"),
    Setting(r"static\.security\.user_password", "admin password, as admin:password", "admin:" + TEXT, V86),
    Setting(r"lang\.(?:gui|wui)", "phone and web language", "|".join(sorted(LANGUAGES.values())),
            f"{V86} _LOCALE; {FPBX}"),
)

RECORD = Record(
    sources={
        "V86": "wazo-platform/wazo-provd-plugins plugins/wazo_yealink/v86/templates/base.tpl and v86/common.py (commit 2321a3f3)",
        "V87": "wazo-platform/wazo-provd-plugins plugins/wazo_yealink/v87/templates/base.tpl (commit 2321a3f3), lines 350-351",
        "YL_COMMON": "wazo-platform/wazo-provd-plugins plugins/wazo_yealink/common/common.py",
        "V81": "wazo-platform/wazo-provd-plugins plugins/xivo-yealink/v81/entry.py (commit a748577b)",
        "V84": "wazo-platform/wazo-provd-plugins plugins/wazo_yealink/v84/entry.py (commit 921a5e69)",
        "V85": "wazo-platform/wazo-provd-plugins plugins/xivo-yealink/v85/entry.py (commit fded2183)",
        "FPBX": "fusionpbx/fusionpbx resources/templates/provision/yealink/t54w/{$mac}.cfg and y000000000096.cfg",
        "DHCP": "wazo-platform/wazo-provd-plugins dhcp/dhcp/dhcpd_update/yealink.conf",
    },
    vendor="yealink",
    family="tseries",
    ouis={"001565": DHCP, "e434d7": DHCP, "805ec0": DHCP, "805e0c": DHCP, "249ad8": DHCP, "44dbd2": DHCP,
          "3497d7": YL_COMMON, "644f56": YL_COMMON, "b061a9": YL_COMMON, "c4fc22": YL_COMMON,
          "ec1da9": YL_COMMON, "f01653": YL_COMMON},
    models=MODELS,
    files={"y000000000{hw}.cfg": f"common file, one per model ({V81}; {V84}); starts #!version:1.0.0.1",
           "{mac}.cfg": f"per-phone file ({V86} _dev_specific_filename); starts #!version:1.0.0.1"},
    notify=Notify(IN_DIALOG, "application/url", "file",
                  "no stored Yealink source describes its Plug and Play NOTIFY: in-dialog and the per-phone "
                  "file URL are this project's choice (the per-phone file also carries the server URL, so the "
                  "common file is fetched at the next check); PNP_NOTIFY_DIALOG and PNP_NOTIFY_BODY override both",
                  False),
    resync=Resync("check-sync", "nothing written: whether the phone authenticates the NOTIFY or needs "
                  "sip.notify_reboot_enable (a key in FPBX, without values) is not in a stored source",
                  f"{FPBX} (key only)"),
    settings=SETTINGS,
    languages=LANGUAGES,
    languages_source=f"{V86} _LOCALE (English, French, German, Spanish, Italian)",
    unconfirmed=(
        "static.auto_provision.server.username/.password: whether the firmware answers a Digest challenge or only Basic is not in a stored source (the fileserver asks for Digest)",
        "Plug and Play NOTIFY form (see notify): no stored source",
        "T33G common file id (124 of 123/124/127)",
        "local_time.time_zone with minutes (+5:30): written by public provisioning scripts, not in a "
        "Yealink source; weekday numbering of start_time/end_time (1 = Sunday) as wazo's tzinform passes it",
        "static.auto_provision.repeat.minutes: no range in the sources",
    ),
)
