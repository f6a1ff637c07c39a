"""Fanvil X4U/X5U/X6U: every fact the generator, listener and notifier use, with its source.

Setting names are XML paths without indexes (``sip/line/Transport`` is ``<sip><line
index="n"><Transport>``). Sources (facts recorded, nothing copied):
- FPBX: fusionpbx/fusionpbx resources/templates/provision/fanvil/{x4u,x5u,x6u}/{$mac}.cfg: lines per
  model (12/16/20), Transport 0 UDP 1 TCP 3 TLS, VoiceCodecMap per line, <dsskey> with
  <dssSide index="1"> (line keys, Value SIP<n>) and <internal> pages (6 keys a page on X4U/X5U,
  12 on X6U, 5 pages), memory keys "value@line/type", <web><account> admin, <fwCheck>, <ap>
  (with <DefaultUsername>/<DefaultPassword>: the provisioning server's HTTP credentials).
- WAZO: wazo-platform/wazo-provd-plugins plugins/wazo_fanvil (common/templates/base-new.tpl,
  common/common.py, serie_x/entry.py): side keys per page (X4U 3, X5U 4, X6U 5), memory key
  suffixes /f speed dial, /ba BLF, /c call park, time zone (TimeZone in quarter hours with the
  names of _TZ_INFO, EnableDST 2, DSTFixedType 2, DST start/end month, week (-1 = last),
  weekday (0 = Sunday), hour; DSTMinOffset at most 60), <ap> FlashServerIP/FlashFileName/
  FlashProtocol 4 (HTTP), DefaultLanguage values.
- DHCP: wazo-provd-plugins dhcp/dhcp/dhcpd_update/fanvil.conf (MAC prefixes).
"""

from __future__ import annotations

from generator.vendors.record import BOOL01, HOST, IN_DIALOG, TEXT, Model, Notify, Record, Resync, Setting

FPBX = "[FPBX]"
WAZO = "[WAZO]"
DHCP = "[DHCP]"

# accounts (FPBX line count); keys = side keys (WAZO, one side page as FPBX writes) + memory keys
# (FPBX: 5 internal pages of `page` keys).
MODELS = {
    "X4U": Model(12, 3 + 30, f"{FPBX}; {WAZO}", {"side": 3, "page": 6, "pages": 5}),
    "X5U": Model(16, 4 + 30, f"{FPBX}; {WAZO}", {"side": 4, "page": 6, "pages": 5}),
    "X6U": Model(20, 5 + 60, f"{FPBX}; {WAZO}", {"side": 5, "page": 12, "pages": 5}),
}

TRANSPORT = {"udp": 0, "tcp": 1, "tls": 3}  # FPBX
CODEC = {"pcmu": "PCMU", "pcma": "PCMA", "g722": "G722", "g729": "G729", "opus": "OPUS"}  # FPBX VoiceCodecMap
PROTOCOL = {"http": 4, "https": 5}  # FlashProtocol: WAZO 4 (HTTP), FPBX 5 (HTTPS); TFTP has no source
SUPPORTED_KEYS = {"none", "line", "speed_dial", "blf", "park"}
MEMORY_SUFFIX = {"speed_dial": "f", "blf": "ba", "park": "c"}  # WAZO common.py

# WAZO _NEW_SUPPORTED_LANGUAGES and _NEW_MODEL_SHORT_LANGUAGE_MAPPINGS; BCP 47 -> DefaultLanguage.
LANGUAGES = {"en": "en", "zh": "cn", "zh-cn": "cn", "zh-hans": "cn", "zh-tw": "tc", "zh-hant": "tc",
             "ru": "ru", "it": "it", "fr": "fr", "de": "de", "he": "he", "es": "es", "ca": "cat", "eu": "eus",
             "tr": "tr", "hr": "hr", "sk": "slo", "cs": "cz", "nl": "nl", "ko": "ko", "uk": "ua", "pt": "pt",
             "pl": "pl", "ar": "ar"}

_URL = r"(?:tftp|https?|ftp)://[A-Za-z0-9_.:/\[\]~%@+=?&-]+"
_CODECS = "(?:PCMU|PCMA|G722|G729|OPUS)"

SETTINGS = (
    Setting("sip/line/(?:PhoneNumber|DisplayName|RegisterUser|RegisterPswd)", "user, display name, auth user, "
            "password", TEXT, f"{FPBX}; {WAZO}"),
    Setting("sip/line/RegisterAddr", "registrar", HOST, f"{FPBX}; {WAZO}"),
    Setting("sip/line/(?:RegisterPort|ProxyPort)", "registrar / proxy port", r"[0-9]{1,5}", f"{FPBX}; {WAZO}"),
    Setting("sip/line/EnableReg", "register this line", BOOL01, f"{FPBX}; {WAZO}"),
    Setting("sip/line/Transport", "transport: 0 UDP, 1 TCP, 3 TLS", "[013]", FPBX),
    Setting("sip/line/ProxyAddr", "outbound proxy", HOST, f"{FPBX}; {WAZO}"),
    Setting("sip/line/VoiceCodecMap", "codecs of this line, in order", rf"{_CODECS}(?:,{_CODECS})*", FPBX),
    Setting("dsskey/(?:dssSide|internal)/Fkey/Type", "key type: 0 none, 1 memory key, 2 line", "[012]",
            f"{FPBX}; {WAZO}"),
    Setting("dsskey/(?:dssSide|internal)/Fkey/Value", "line: SIP<n>; memory key: value@line/f|ba|c",
            r"|SIP[0-9]{1,2}|[^\x00-\x1f\x7f@]+@[0-9]{1,2}/(?:f|ba|c)", f"{FPBX} (SIP<n>); {WAZO} (suffixes)"),
    Setting("dsskey/(?:dssSide|internal)/Fkey/Title", "key label", TEXT, f"{FPBX}; {WAZO}"),
    Setting("ap/(?:DownloadDeviceConf|SaveProvisionInfo)", "fetch the device file; keep the provisioning data",
            "1", f"{WAZO}; {FPBX}"),
    Setting("ap/FlashServerIP", "provisioning server URL", _URL, f"{WAZO}; {FPBX}"),
    Setting("ap/DefaultUsername", "provisioning server HTTP user (ours: the MAC)", "[0-9a-f]{12}",
            f"{FPBX} (<ap><DefaultUsername>, x4u line 2963, x5u 3625, x6u 4294: the provisioning credentials)"),
    Setting("ap/DefaultPassword", "provisioning server HTTP password (ours: per device, random)",
            "[A-Za-z0-9_-]{16,64}", f"{FPBX} (<ap><DefaultPassword>, next to DefaultUsername)"),
    Setting("ap/FlashFileName", "file fetched from it ($mac: the phone's MAC)", r"\$mac\.cfg", WAZO),
    Setting("ap/FlashProtocol", "4 HTTP, 5 HTTPS", "[45]", f"{WAZO} (4); {FPBX} (5)"),
    Setting("fwCheck/EnableAutoUpgrade", "check for firmware", "1", f"{WAZO}; {FPBX}"),
    Setting("fwCheck/UpgradeServer1", "firmware server URL", _URL, f"{WAZO}; {FPBX}"),
    Setting("phone/date/EnableSNTP", "use NTP", "1", f"{WAZO}; {FPBX}"),
    Setting("phone/date/SNTPServer", "NTP server", HOST, f"{WAZO}; {FPBX}"),
    Setting("phone/date/TimeZone", "UTC offset in quarter hours", r"-?[0-9]{1,2}", WAZO),
    Setting("phone/date/TimeZoneName", "zone name of that offset", r"UCT|UTC[+-][0-9]{1,2}", WAZO),
    Setting("phone/date/EnableDST", "daylight saving: 0 off, 2 by the rules below", "[02]", WAZO),
    Setting("phone/date/DSTFixedType", "rule by month/week/weekday", "2", WAZO),
    Setting("phone/date/DSTMinOffset", "daylight-saving offset in minutes (at most 60)", r"[0-9]{1,2}", WAZO),
    Setting("phone/date/DST(?:Start|End)Mon", "DST month", r"[1-9]|1[0-2]", WAZO),
    Setting("phone/date/DST(?:Start|End)Week", "DST week (-1 = last)", r"-1|[1-4]", WAZO),
    Setting("phone/date/DST(?:Start|End)Wday", "DST weekday (0 = Sunday)", "[0-6]", WAZO),
    Setting("phone/date/DST(?:Start|End)Hour", "DST hour", r"[0-9]|1[0-9]|2[0-3]", WAZO),
    Setting("phone/display/DefaultLanguage", "language", "|".join(sorted(set(LANGUAGES.values()))), WAZO),
    Setting("web/account/Name", "web admin user", "admin", FPBX),
    Setting("web/account/Password", "web admin password", TEXT, FPBX),
    Setting("web/account/Level", "web admin level", "10", FPBX),
)

RECORD = Record(
    sources={
        "FPBX": "fusionpbx/fusionpbx resources/templates/provision/fanvil/<x4u|x5u|x6u>/{$mac}.cfg",
        "WAZO": "wazo-platform/wazo-provd-plugins plugins/wazo_fanvil/common/templates/base-new.tpl, common/common.py and serie_x/entry.py",
        "DHCP": "wazo-platform/wazo-provd-plugins dhcp/dhcp/dhcpd_update/fanvil.conf",
    },
    vendor="fanvil",
    family="xseries",
    ouis={"00a859": DHCP, "0c383e": DHCP},
    models=MODELS,
    files={"{mac}.cfg": f"XML <sysConf> (Version 2.0002, as {WAZO} writes); {FPBX}"},
    notify=Notify(IN_DIALOG, "application/url", "file",
                  "no stored Fanvil source describes its Plug and Play NOTIFY (fusionpbx only shows the "
                  "<pnp> settings: 224.0.1.75, port 5060): in-dialog and the file URL are this project's "
                  "choice; PNP_NOTIFY_DIALOG and PNP_NOTIFY_BODY override both", False),
    resync=Resync("check-sync", "nothing written (fusionpbx sets <sip><NotifyReboot>1, whose meaning is not "
                  "given)", FPBX),
    settings=SETTINGS,
    languages=LANGUAGES,
    languages_source=f"{WAZO} _NEW_SUPPORTED_LANGUAGES",
    unconfirmed=(
        "<ap><DefaultUsername>/<DefaultPassword>: fusionpbx fills them with its provisioning HTTP credentials; no Fanvil document in a stored source names them, nor how FlashServerIP and FlashFileName are joined (written as wazo and fusionpbx do: a server URL without the trailing /)",
        "X3U: no stored source; not in the table",
        "Plug and Play NOTIFY form: no stored source",
        "check_interval: the unit of <ap><FlashInterval> is not in a source, so it is not written",
        "TFTP provisioning (FlashProtocol): no source for its code; refused",
        "UTC offsets that are not whole hours: _TZ_INFO has whole hours only; refused",
        "account labels: <SipName> is written empty by fusionpbx without saying what it shows; not written",
    ),
)
