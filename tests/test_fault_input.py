"""Hostile input (issue 11, items 8-11): nothing an attacker on the LAN sends reaches a terminal
raw, fills a disk, holds a connection open, or gets echoed into a SIP answer."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from twisted.logger import LogLevel

from services.log import LineObserver
from services.textsafe import json_safe, printable
from tools.monitor import Formatter

MAC = "000b82f55284"
# what an attacker puts in an Event header's model= parameter: clear the screen, home, and a
# forged line; and the 8-bit CSI (U+009B), NEL (U+0085) and LINE SEPARATOR that JSON leaves raw
HOSTILE = "GRP\x1b[2J\x1b[H\r\nFAKE 00:00 ok\x9b31m\x85\u2028\u202e"
RAW = ("\x1b", "\r", "\n", "\x9b", "\x85", "\u2028", "\u202e")


def _clean(text: str) -> bool:
    return not any(c in text for c in RAW)


# --- item 11: network text is shown escaped ---------------------------------------------------

def test_printable_escapes_every_control_and_keeps_the_rest() -> None:
    assert printable("Müller 日本 \\ ok") == "Müller 日本 \\ ok"
    assert printable("a\x1b[2J\tb\r\n\x00\x7f\x9b\x85\u2028\u2029\u202e") == (
        "a\\x1b[2J\\tb\\r\\n\\x00\\x7f\\x9b\\x85\\u2028\\u2029\\u202e")
    for code in list(range(0x20)) + list(range(0x7f, 0xa0)):
        assert _clean(printable(chr(code))) and printable(chr(code)).startswith("\\")
    encoded = json.dumps({"m": HOSTILE}, ensure_ascii=False)
    assert json.loads(json_safe(encoded)) == {"m": HOSTILE} and _clean(json_safe(encoded))


def test_text_and_json_logs_escape_network_text() -> None:
    for as_json in (False, True):
        out = io.StringIO()
        LineObserver(out, "listener", as_json)({
            "log_format": "discovered {mac} {model}", "log_level": LogLevel.info, "log_time": 0.0,
            "log_namespace": "listener", "mac": MAC, "model": HOSTILE})
        text = out.getvalue()
        assert text.count("\n") == 1 and text.endswith("\n"), text  # one line, not a forged second
        assert _clean(text[:-1]), repr(text)
        if as_json:
            assert json.loads(text)["model"] == HOSTILE  # the value itself is kept exactly
        else:
            assert "GRP\\x1b[2J\\x1b[H\\r\\nFAKE" in text


def test_monitor_lines_escape_payload_and_topic_text() -> None:
    payload = json.dumps({"vendor": "grandstream", "model": HOSTILE, "firmware": "1", "ip": "127.0.0.2",
                          "port": 5060}).encode()
    line = Formatter("pnp").line(f"pnp/devices/{MAC}/discovered", payload, False, at="T")
    assert _clean(line) and "GRP\\x1b[2J\\x1b[H" in line, repr(line)
    other = Formatter("pnp").line("pnp/x\x1b]0;owned\x07", b"{}", False, at="T")
    assert _clean(other) and "\\x1b]0;owned\\x07" in other
    as_json = Formatter("pnp", as_json=True).line(f"pnp/devices/{MAC}/discovered", payload, False, at="T")
    assert _clean(as_json) and json.loads(as_json)["data"]["model"] == HOSTILE


def test_pnp_devices_prints_hostile_discoveries_escaped(broker, probe) -> None:
    probe.publish(f"pnp/devices/{MAC}/discovered",
                  {"mac": MAC, "vendor": "grandstream", "model": HOSTILE, "firmware": "1\x1b[31m",
                   "ip": "127.0.0.2", "port": 5060, "seen_at": "2026-11-27T03:00:00.000Z"}, retain=True)
    env = {**os.environ, "PNP_MQTT_URL": broker.url, "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, "-m", "services.cli", "devices"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(MAC), result.stdout  # header + one device row
    assert _clean(result.stdout.replace("\n", "")), repr(result.stdout)
    assert "GRP\\x1b[2J\\x1b[H\\r\\nFAKE" in lines[1] and "1\\x1b[31m" in lines[1]
