"""snom D7xx: every fact the generator, listener and notifier use, with its source.

Sources (facts recorded, nothing copied):
- FPBX: fusionpbx/fusionpbx resources/templates/provision/snom/D7xx/{$mac}.xml (D715, D717, D735,
  D765, D785): accounts per model (its loop stops at 4/6/12 lines), function keys per model
  (maxKeys), setting_server as the URL of the phone's own file, settings_refresh_timer in
  seconds, codec_priority_list ending in telephone-event, user_outbound with ;transport=,
  firmware (the firmware file's URL), http_user/http_pass/admin_mode_password, language,
  http_client_user/http_client_pass (the credentials the phone sends to the provisioning server,
  next to setting_server; http_user/http_pass are the phone's own web login, not these).
- WAZO: wazo-platform/wazo-provd-plugins plugins/wazo_snom/common (common.py, templates/base.tpl,
  300.tpl, common/snom-model.xml.tpl.btpl): user_pname, user_idle_text, language values,
  fkey values speed/blf/line/none/transfer, firmware_status pointing at a <firmware-settings> file.
- XIVO_TZ: the same repository, plugins/xivo-snom/common/common.py @e9bbe983 (_format_tzinfo):
  empty timezone, utc_offset in seconds, dst = "<seconds> MM.WW.DD HH:MM:SS MM.WW.DD HH:MM:SS"
  with weekdays counted from 1 = Monday.
- DHCP: the same repository, dhcp/dhcp/dhcpd_update/snom.conf (MAC prefixes).
"""

from __future__ import annotations

from generator.vendors.record import HOST, IN_DIALOG, TEXT, Model, Notify, Record, Resync, Setting

FPBX = "[FPBX]"
WAZO = "[WAZO]"
WAZO_FW = "[WAZO_FW]"
XIVO_TZ = "[XIVO_TZ]"
DHCP = "[DHCP]"

MODELS = {
    "D715": Model(4, 57, f"{FPBX}: 4 lines, maxKeys 57 (function keys incl. expansion modules)"),
    "D717": Model(6, 57, f"{FPBX}: 6 lines, maxKeys 57"),
    "D735": Model(12, 85, f"{FPBX}: 12 lines, maxKeys 85"),
    "D765": Model(12, 69, f"{FPBX}: 12 lines, maxKeys 69"),
    "D785": Model(12, 77, f"{FPBX}: 12 lines, maxKeys 77"),
}

# codec_priority_list names (FPBX default list); Opus is not among them and is left out.
CODECS = {"pcmu": "pcmu", "pcma": "pcma", "g722": "g722", "g729": "g729"}
SUPPORTED_KEYS = {"none", "line", "blf", "speed_dial", "transfer"}

# WAZO _LOCALE: language / web_language values.
LANGUAGES = {"de": "Deutsch", "en": "English", "es": "Espanol", "fr": "Français", "it": "Italiano",
             "nl": "Nederlands"}

_URL = r"(?:tftp|https?|ftp)://[A-Za-z0-9_.:/\[\]~%@+=?&-]+"
_CHANGE = r"(?:0[1-9]|1[0-2])\.0[1-5]\.0[1-7] (?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"

SETTINGS = (
    Setting("user_active", "identity active", "on|off", f"{FPBX}; {WAZO}"),
    Setting("user_(?:realname|name|pass|pname|idle_text)", "display name, user, password, auth name, idle text",
            TEXT, f"{FPBX}; {WAZO} (user_pname, user_idle_text)"),
    Setting("user_host", "registrar (host or host:port; empty on an identity not used)", r"[A-Za-z0-9_.:\[\]-]*",
            f"{FPBX}; {WAZO}"),
    Setting("user_outbound", "outbound proxy host:port;transport=udp|tcp|tls", HOST + r":[0-9]{1,5};transport=(?:udp|tcp|tls)",
            f"{FPBX}; {WAZO}"),
    Setting("codec_priority_list", "codecs in order, ending in telephone-event",
            r"(?:(?:pcmu|pcma|g722|g729),)*telephone-event", FPBX),
    Setting("setting_server", "URL of the phone's own settings file", _URL, f"{FPBX} (…?mac=<mac>)"),
    Setting("http_client_user", "user name the phone sends to the provisioning server (ours: the MAC)",
            "[0-9a-f]{12}", f"{FPBX} (http_client_user, lines 46 (D715) and 56 (D785))"),
    Setting("http_client_pass", "password the phone sends to the provisioning server (ours: per device, random)",
            "[A-Za-z0-9_-]{16,64}", f"{FPBX} (http_client_pass, lines 47 (D715) and 57 (D785))"),
    Setting("settings_refresh_timer", "seconds between checks (0 = never)", r"[0-9]{1,7}", FPBX),
    Setting("firmware_status", "URL of a <firmware-settings> file", _URL[:-1] + r"+\.xml", WAZO_FW),
    Setting("firmware", "URL of the firmware file", _URL[:-1] + r"+\.bin", FPBX),
    Setting("timezone", "timezone code, written empty: utc_offset and dst say it all", "", XIVO_TZ),
    Setting("utc_offset", "standard time offset east of UTC, seconds", r"[+-][0-9]{1,5}", XIVO_TZ),
    Setting("dst", "daylight saving: seconds, start, end (month.week.weekday time; 1 = Monday); empty = none",
            rf"(?:[0-9]{{1,5}} {_CHANGE} {_CHANGE})?", XIVO_TZ),
    Setting("ntp_server", "NTP server", HOST, f"{FPBX}; {WAZO}"),
    Setting("(?:admin_mode_password|http_pass)", "admin password (phone menu, web)", TEXT, f"{FPBX}; {WAZO}"),
    Setting("http_user", "web user", "admin", f"{FPBX}; {WAZO}"),
    Setting("(?:language|web_language)", "phone and web language", "|".join(sorted(LANGUAGES.values())),
            f"{WAZO} _LOCALE; {FPBX}"),
    Setting("fkey", "function key: none, line, transfer, speed <number>, blf <extension>",
            r"none|line|transfer|(?:speed|blf) [^\x00-\x1f\x7f]+", f"{WAZO} (300.tpl, common.py _add_fkeys); {FPBX}"),
    Setting("fkey@context", "function key's identity (account number) or active", r"active|[0-9]{1,2}", FPBX),
    Setting("fkey@label", "function key label", TEXT, f"{WAZO}; {FPBX}"),
)

RECORD = Record(
    sources={
        "FPBX": "fusionpbx/fusionpbx resources/templates/provision/snom/<D715|D717|D735|D765|D785>/{$mac}.xml",
        "WAZO": "wazo-platform/wazo-provd-plugins plugins/wazo_snom/common/common.py, common/templates/base.tpl and 300.tpl",
        "WAZO_FW": "wazo-platform/wazo-provd-plugins plugins/wazo_snom/common/templates/common/snom-model.xml.tpl.btpl and snom-model-firmware.xml.tpl.btpl",
        "XIVO_TZ": "wazo-platform/wazo-provd-plugins plugins/xivo-snom/common/common.py (commit e9bbe983), _format_tzinfo",
        "DHCP": "wazo-platform/wazo-provd-plugins dhcp/dhcp/dhcpd_update/snom.conf",
    },
    vendor="snom",
    family="dseries",
    ouis={"000413": DHCP, "00087b": DHCP},
    models=MODELS,
    files={"{mac}.xml": f"<settings><phone-settings e=\"2\"> indexed settings, <functionKeys>; {FPBX}"},
    notify=Notify(IN_DIALOG, "application/url", "file",
                  "no stored snom source describes its Plug and Play NOTIFY: in-dialog and the file URL are "
                  "this project's choice; PNP_NOTIFY_DIALOG and PNP_NOTIFY_BODY override both", False),
    resync=Resync("check-sync", "nothing written; whether the phone challenges the NOTIFY is not in a stored source",
                  "none"),
    settings=SETTINGS,
    languages=LANGUAGES,
    languages_source=f"{WAZO} _LOCALE",
    unconfirmed=(
        "http_client_user/http_client_pass: fusionpbx writes them next to setting_server for the provisioning server; no snom document in a stored source says so, nor whether Digest is answered",
        "Plug and Play NOTIFY form: no stored source",
        "function key counts include expansion-module keys (fusionpbx's maxKeys); the physical count "
        "per model is not in a source",
        "Opus: not in fusionpbx's codec list, so left out of codec_priority_list",
        "timezone codes (GER+1, USA-5, ...): their daylight-saving rules are in no stored source and public "
        "IANA-to-code tables disagree (Australia/Sydney: AUS+10 in one, NCL+11 in another), so the zone is "
        "written as utc_offset + dst from the tz database, as the xivo-snom plugin did, with timezone empty",
        "park, intercom, DTMF and voicemail keys: no fkey syntax in a stored source (refused)",
    ),
)
