"""Hostile input (issue 11, items 8-11): nothing an attacker on the LAN sends reaches a terminal
raw, fills a disk, holds a connection open, or gets echoed into a SIP answer."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, threads
from twisted.logger import LogLevel

from tools.certs import make_pair
from generator import schema
from generator.engine import Engine, Error as GenError
from generator.render import Renderer
from generator.store import Store as GeneratorStore
from listener.discovery import SubscribeCore
from services.log import LineObserver
from services.sip.message import MAX_MESSAGE, parse, unsafe_header
from services.textsafe import json_safe, printable
from tests import test_fileserver
from tests.test_sip_message import GRANDSTREAM
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
    result = subprocess.run([sys.executable, "-m", "tools.cli", "devices"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith(MAC), result.stdout  # header + one device row
    assert _clean(result.stdout.replace("\n", "")), repr(result.stdout)
    assert "GRP\\x1b[2J\\x1b[H\\r\\nFAKE" in lines[1] and "1\\x1b[31m" in lines[1]


# --- item 8: the fileserver refuses bodies unread and bounds the time a head may take --------

def _fds_under(directory: str) -> list[str]:
    """Open files of this process (the fileserver runs in it) whose path is under ``directory``;
    an unlinked temp file still shows, as "<dir>/#123 (deleted)"."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + "/"):
            out.append(target)
    return out


def _connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """The status line and headers of the answer, read up to the blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _until_closed(sock: socket.socket) -> bool:
    """True once the server closed (EOF or reset), reading and discarding what it sends."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


class BodyAndHeadTest(test_fileserver.FileserverCase):
    @defer.inlineCallbacks
    def test_a_120_mb_post_is_refused_unread_and_no_temp_file_is_made(self):
        scratch = Path(self.mktemp()).resolve()
        scratch.mkdir()
        # where Twisted would put the body (tempfile.TemporaryFile): a folder of this test's own
        self.patch(tempfile, "tempdir", str(scratch))
        yield self.start()
        result = yield threads.deferToThread(self._big_post, self.port, str(scratch))
        head, open_during, closed = result
        self.assertTrue(head.startswith(b"HTTP/1.1 405 "), head)
        self.assertIn(b"allow: get, head", head.lower())
        self.assertEqual(open_during, [])
        self.assertTrue(closed)
        self.assertEqual(list(scratch.iterdir()), [])

        # a GET or HEAD with a body (a length, or chunked) is refused the same way, with 413;
        # Expect: 100-continue gets no 100 (that would invite the body)
        for head in (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 120000000\r\n\r\n",
                     b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                     b"HEAD /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                     b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 9999999\r\n\r\n"):
            answer = yield threads.deferToThread(self._send_head, self.port, head)
            expected = b"HTTP/1.1 405 " if head.startswith(b"PUT") else b"HTTP/1.1 413 "
            self.assertTrue(answer.startswith(expected), (head, answer))
        self.assertEqual(_fds_under(str(scratch)), [])
        # the refusals are counted where an operator looks
        status, _, metrics = yield test_fileserver.fetch(self.base() + "/metrics")
        self.assertIn(b'pnp_fileserver_requests_total{code="413"} 3', metrics)
        self.assertIn(b'pnp_fileserver_requests_total{code="405"} 2', metrics)

    @staticmethod
    def _send_head(port: int, head: bytes) -> bytes:
        with _connect(port) as sock:
            sock.sendall(head)
            return _read_answer(sock)

    @staticmethod
    def _big_post(port: int, scratch: str) -> tuple[bytes, list[str], bool]:
        size = 120 * 1024 * 1024
        with _connect(port) as sock:
            sock.sendall(b"POST /p/anything/cfg.xml HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
            sock.sendall(b"\0" * 1024 * 1024)  # the start of the body: the server has it in hand
            head = _read_answer(sock)  # answered before the other 119 MB were sent
            open_during = _fds_under(scratch)
            sent = 1024 * 1024
            try:
                while sent < size:
                    sent += sock.send(b"\0" * 1024 * 1024)
            except OSError:
                pass  # closed under us once its linger was over: the body was never wanted
            return head, open_during, _until_closed(sock)

    @defer.inlineCallbacks
    def test_slow_request_heads_are_closed_at_the_deadline(self):
        yield self.start(http_head_timeout="2")
        published = yield self.assign(test_fileserver.config())
        url = published["files"][0]["url"]
        closed = yield threads.deferToThread(self._slowloris, self.port, 60)
        self.assertEqual(len(closed), 60)
        # each was closed, with a 408, while it was still sending its head a byte at a time (every
        # 0.5 s, so an idle timeout that each byte restarts would never have fired), or silent
        for answer, bytes_sent, head_length in closed:
            self.assertTrue(answer.startswith(b"HTTP/1.1 408 "), answer)
            self.assertLess(bytes_sent, head_length)
        # a phone that sends its head at once is served as before
        status, _, body = yield test_fileserver.fetch(url)
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_the_deadline_covers_a_tls_handshake_that_never_comes(self):
        cert_pem, key_pem = make_pair(["127.0.0.1"])
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "cert.pem").write_bytes(cert_pem)
        (directory / "key.pem").write_bytes(key_pem)
        yield self.start(tls_cert=str(directory / "cert.pem"), tls_key=str(directory / "key.pem"),
                         http_head_timeout="1")
        closed = yield threads.deferToThread(lambda: _until_closed(_connect(self.port)))
        self.assertTrue(closed)
        # a phone that does its handshake and sends its head is served
        context = ssl.create_default_context(cafile=str(directory / "cert.pem"))
        status, _, _ = yield test_fileserver.fetch(f"https://127.0.0.1:{self.port}/healthz", context=context)
        self.assertEqual(status, 200)

    @staticmethod
    def _slowloris(port: int, count: int) -> list[tuple[bytes, int, int]]:
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
        started = time.monotonic()
        socks = {}
        for i in range(count):
            sock = _connect(port, f"127.0.0.{2 + i % 50}")
            sock.setblocking(False)
            socks[sock] = [b"", 0, i % 3 == 0]  # answer so far, bytes of the head sent, silent
        done: list[tuple[bytes, int, int]] = []
        closed_at = []
        try:
            while socks and any(not silent and sent < len(head) for _, sent, silent in socks.values()):
                ready, _, _ = select.select(list(socks), [], [], 0.5)
                for sock in ready:
                    try:
                        chunk = sock.recv(65536)
                    except ConnectionResetError:
                        chunk = b""
                    if chunk:
                        socks[sock][0] += chunk
                        continue
                    answer, sent, _ = socks.pop(sock)
                    closed_at.append(time.monotonic() - started)
                    done.append((answer, sent, len(head)))
                    sock.close()
                if not ready:
                    for sock, state in socks.items():
                        if state[2]:
                            continue  # connects and never sends: the deadline runs from the connect
                        try:
                            sock.send(head[state[1]:state[1] + 1])
                            state[1] += 1
                        except OSError:
                            pass
        finally:
            for sock in socks:
                sock.close()
        if closed_at:
            print(f"\n{len(closed_at)} slow heads closed after {min(closed_at):.2f}-{max(closed_at):.2f} s "
                  f"(head deadline 2 s)")
        return done



# --- items 9 and 11: the listener's limits and refusals (on real sockets: tests/test_listener.py)

def test_the_parser_limit_is_counted_as_too_large_not_malformed() -> None:
    core = SubscribeCore()
    big = GRANDSTREAM.replace(b"Expires: 0\r\n", b"X-Pad: " + b"a" * MAX_MESSAGE + b"\r\n")
    outcome = core.handle(big, ("127.0.0.2", 5080), "127.0.0.1", 0.0)
    assert outcome.verdict == "too_large" and outcome.reply is None
    assert core.counters["too_large"] == 1 and core.counters["malformed"] == 0


def test_unsafe_header_names_a_value_with_cr_lf_or_nul() -> None:
    assert unsafe_header(parse(GRANDSTREAM)) is None
    for bad in ("a\rb", "a\nb", "a\0b", "\r"):
        message = parse(GRANDSTREAM)
        message.headers.set("Call-ID", bad)
        assert unsafe_header(message) == "Call-ID", repr(bad)
    # what a datagram can carry: a bare CR inside a line (CRLF and LF end lines, NUL is refused)
    assert unsafe_header(parse(GRANDSTREAM.replace(b"Call-ID: 1848", b"Call-ID: \r1848"))) == "Call-ID"


# --- item 10: control characters are refused in every text field, for every vendor format ----

CONTROLS = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029"]
# every line-based format the generator writes, and a raw setting name each one takes
FORMATS = {("grandstream", "GRP2614"): "P34", ("yealink", "T46S"): "lang.gui",
           ("snom", "D785"): "language", ("fanvil", "X4U"): "phone.MenuPassword"}


def _assignment(vendor: str, model: str, setting: str) -> dict:
    return {"vendor": vendor, "model": model,
            "accounts": [{"sip_server": "pbx.example.com", "user_id": "1001", "auth_id": "a1001",
                          "password": "s3cret", "display_name": "Alice", "label": "Desk",
                          "outbound_proxy": "sbc.example.com"}],
            "keys": [{"type": "blf", "value": "1002", "label": "Carol"}],
            "provisioning": {"config_server": "https://prov.example.com/cfg"},
            "time_zone": "Europe/Berlin", "ntp_server": "ntp.example.com", "admin_password": "adm",
            "vendor_settings": {vendor: {setting: "x"}}}


# where each bad character goes: a path into the assignment, and the field the error must name
PLACES = [(("accounts", 0, field), f"accounts[0].{field}")
          for field in ("sip_server", "user_id", "auth_id", "password", "display_name", "label",
                        "outbound_proxy")] + [
    (("keys", 0, "value"), "keys[0].value"), (("keys", 0, "label"), "keys[0].label"),
    (("provisioning", "config_server"), "provisioning.config_server"), (("time_zone",), "time_zone"),
    (("ntp_server",), "ntp_server"), (("admin_password",), "admin_password")]


def _with(document: dict, path: tuple, char: str) -> dict:
    document = json.loads(json.dumps(document))
    node = document
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = node[path[-1]] + char
    return document


def test_every_vendor_format_refuses_control_characters_naming_the_field(tmp_path: Path) -> None:
    engine = Engine(Renderer(), GeneratorStore(tmp_path / "generator.db"))
    engine.ready = True
    macs = iter(f"000b82{i:06x}" for i in range(100000))
    for (vendor, model), setting in FORMATS.items():
        clean = _assignment(vendor, model, setting)
        effects = engine.assignment(next(macs), json.dumps(clean).encode(), clean, None)
        assert "Publish" in [type(e).__name__ for e in effects], (vendor, effects)  # the control
        cases = [(_with(clean, path, char), field) for path, field in PLACES for char in CONTROLS]
        for char in CONTROLS:
            # the setting's value, and its name ("P34\n"), in the vendor's own section
            cases.append(({**clean, "vendor_settings": {vendor: {setting: "x" + char}}},
                          f"vendor_settings.{vendor}.{setting}"))
            cases.append(({**clean, "vendor_settings": {vendor: {setting + char: "x"}}},
                          f"vendor_settings.{vendor}"))
        for document, field in cases:
            effects = engine.assignment(next(macs), json.dumps(document).encode(), document, None)
            assert [type(e) for e in effects] == [GenError], (vendor, field, effects)
            assert effects[0].field == field and field in effects[0].message, (vendor, field, effects[0])


def test_the_fast_check_agrees_on_every_control_character() -> None:
    for code in list(range(0x20)) + list(range(0x7f, 0xa0)) + [0x2028, 0x2029]:
        for text in (chr(code), f"a{chr(code)}", f"{chr(code)}a"):
            doc = {"accounts": [{"sip_server": "pbx", "user_id": "1", "display_name": text}]}
            assert schema.first_problem(doc) is not None, hex(code)
            assert schema._FAST_FULL(doc) is False, hex(code)
    for text in ("Müller", "日本語", "a b", "\u00a0", "x" * 256):
        doc = {"accounts": [{"sip_server": "pbx", "user_id": "1", "display_name": text}]}
        assert schema.first_problem(doc) is None and schema._FAST_FULL(doc) is True, text
