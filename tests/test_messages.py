"""services/messages.py: every payload of the contract round-trips, and a bad one is refused with
a PayloadError that names the field."""

from __future__ import annotations

import json
import re

import pytest

from services.messages import (
    SCHEMA_VERSION, Config, ConfigFile, Discovered, ErrorReport, Fetched, FileList, ListedFile,
    NotifyStatus, Payload, PayloadError, Published, PublishedFile, ResyncCredentials, ServiceStatus,
    decode_json, encode_json, now_iso, url_without_secret,
)

AT = "2026-01-02T03:04:05.678Z"
FILE = ConfigFile(name="000b82f55284.cfg", content_type="text/plain", content="a=1\n",
                  encoding="utf-8", sha256="ab" * 32, size=4)

# one of each payload, every field set away from its default so a dropped field shows
EXAMPLES: list[Payload] = [
    Discovered(mac="000b82f55284", vendor="polycom", model="VVX400", firmware="6.4.0", ip="10.0.0.5",
               port=5060, contact="<sip:10.0.0.5:5060>", user_agent="PolycomVVX", call_id="c1",
               from_tag="f", to_tag="t", seen_at=AT, cseq=7, request_uri="sip:224.0.1.75",
               from_uri="sip:a@b", to_uri="sip:c@d", event={"profile": "device"},
               interface="10.0.0.1", boot=3),
    FILE,
    Config(files=[FILE], revision=4, template="polycom", mac="000b82f55284", vendor="polycom",
           model="VVX400", notify_path="000b82f55284.cfg"),
    PublishedFile(name="a.cfg", url="http://x/a.cfg", sha256="cd" * 32),
    Published(url="http://x/", files=[PublishedFile(name="a.cfg", url="http://x/a.cfg", sha256="cd" * 32)],
              revision=4, mac="000b82f55284", vendor="yealink", enrolling=False, epoch=3),
    NotifyStatus(status="accepted", code=200, attempts=2, url="http://x/", revision=4, call_id="c1",
                 at=AT, reason="OK", rtt_ms=12.5, kind="check-sync", challenged=True),
    ResyncCredentials(revision=4, username="1001", password="secret", mac="000b82f55284"),
    Fetched(file="a.cfg", sha256="cd" * 32, status=200, client="10.0.0.5", user_agent="Yealink",
            provisioned=True, at=AT, revision=4, server="fs1"),
    ErrorReport(service="generator", code="bad_assignment", message="no such profile", at=AT,
                field="profile"),
    ServiceStatus(state="online", version="0.1.0", started_at=AT, service="listener", instance="a",
                  counters={"subscribes": 3}, at=AT, health="degraded", reasons={"disk": "full"},
                  notices={"store": "rebuilt"}),
    ListedFile(name="a.cfg", sha256="cd" * 32, size=12),
    FileList(files=[ListedFile(name="a.cfg", sha256="cd" * 32, size=12)],
             revision=4, mac="000b82f55284", vendor="yealink"),
]


def _id(p: Payload) -> str:
    return type(p).__name__


@pytest.mark.parametrize("payload", EXAMPLES, ids=_id)
def test_every_payload_round_trips_through_json(payload):
    raw = payload.to_json()
    assert json.loads(raw)["v"] == SCHEMA_VERSION
    again = type(payload).from_json(raw)
    assert again == payload
    assert again.to_json() == raw
    # a reader also takes text and an already-parsed object
    assert type(payload).from_json(raw.decode()) == payload
    assert type(payload).from_json(json.loads(raw)) == payload


@pytest.mark.parametrize("payload", EXAMPLES, ids=_id)
def test_unknown_fields_from_a_newer_publisher_are_ignored(payload):
    data = {**payload.to_dict(), "added_in_v2": {"anything": [1, 2]}, "v": SCHEMA_VERSION + 1}
    assert type(payload).from_json(encode_json(data)) == payload


def test_optional_fields_take_their_defaults_when_absent():
    minimal = {"status": "timeout", "code": None, "attempts": 3, "url": "u", "revision": 1,
               "call_id": "c", "at": AT}
    status = NotifyStatus.from_json(minimal)
    assert (status.code, status.rtt_ms, status.reason, status.kind, status.challenged) == (
        None, None, "", "ua-profile", False)
    assert ServiceStatus.from_json({"state": "offline", "version": "1", "started_at": AT}).counters == {}


def test_an_integer_is_accepted_where_a_number_is_expected():
    data = {**EXAMPLES[5].to_dict(), "rtt_ms": 12}
    status = NotifyStatus.from_json(data)
    assert status.rtt_ms == 12.0 and isinstance(status.rtt_ms, float)


def _bad(payload: Payload, **change: object) -> bytes:
    return encode_json({**payload.to_dict(), **change})


@pytest.mark.parametrize("payload, field", [
    (EXAMPLES[0], "mac"), (EXAMPLES[0], "port"), (EXAMPLES[2], "files"), (EXAMPLES[2], "revision"),
    (EXAMPLES[5], "code"), (EXAMPLES[7], "provisioned"), (EXAMPLES[9], "started_at"),
], ids=lambda x: x if isinstance(x, str) else _id(x))
def test_a_missing_required_field_is_named(payload, field):
    data = payload.to_dict()
    del data[field]
    with pytest.raises(PayloadError, match=rf"^{field} is missing$"):
        type(payload).from_json(encode_json(data))


@pytest.mark.parametrize("payload, change, message", [
    (EXAMPLES[0], {"port": "5060"}, "port must be an integer"),
    (EXAMPLES[0], {"port": True}, "port must be an integer"),  # JSON true is not 1
    (EXAMPLES[0], {"port": 5060.5}, "port must be an integer"),
    (EXAMPLES[0], {"mac": 12}, "mac must be a string"),
    (EXAMPLES[0], {"event": []}, "event must be an object"),
    (EXAMPLES[2], {"files": {}}, "files must be a list"),
    (EXAMPLES[5], {"code": "200"}, "code must be an integer"),
    (EXAMPLES[5], {"rtt_ms": "fast"}, "rtt_ms must be a number"),
    (EXAMPLES[5], {"rtt_ms": False}, "rtt_ms must be a number"),
    (EXAMPLES[5], {"challenged": 1}, "challenged must be true or false"),
    (EXAMPLES[8], {"field": 3}, "field must be a string"),
    (EXAMPLES[9], {"counters": "none"}, "counters must be an object"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_a_mistyped_field_is_named(payload, change, message):
    with pytest.raises(PayloadError, match=rf"^{re.escape(message)}$"):
        type(payload).from_json(_bad(payload, **change))


def test_a_fault_inside_a_nested_payload_names_the_path():
    good = EXAMPLES[2].to_dict()
    second = {**good["files"][0]}
    del second["sha256"]
    with pytest.raises(PayloadError, match=r"^files\[1\]\.sha256 is missing$"):
        Config.from_json({**good, "files": [good["files"][0], second]})
    with pytest.raises(PayloadError, match=r"^files\[0\]\.size must be an integer$"):
        Config.from_json({**good, "files": [{**good["files"][0], "size": "4"}]})
    with pytest.raises(PayloadError, match=r"^files\[0\] must be a JSON object$"):
        Config.from_json({**good, "files": ["a.cfg"]})


@pytest.mark.parametrize("raw, message", [
    (b"\xff\xfe", "payload is not UTF-8"),
    (b"{not json", "payload is not JSON"),
    (b"", "payload is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "payload is not JSON"),
    (b"[1, 2]", "payload must be a JSON object"),
    (b"null", "payload must be a JSON object"),
    (b'"text"', "payload must be a JSON object"),
])
def test_a_payload_that_is_not_a_json_object_is_refused_with_the_reason(raw, message):
    with pytest.raises(PayloadError, match=f"^{re.escape(message)}"):
        Discovered.from_json(raw)


def test_payload_error_is_a_value_error():
    # callers that predate PayloadError catch ValueError
    assert issubclass(PayloadError, ValueError)


def test_encoding_is_deterministic_and_keeps_non_ascii():
    assert encode_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()
    assert encode_json({"a": 1, "b": 2}) == encode_json({"b": 2, "a": 1})
    assert decode_json('{"a":"é"}'.encode()) == {"a": "é"}


def test_now_is_iso_utc_with_milliseconds():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", now_iso())


@pytest.mark.parametrize("url,shown", [
    ("http://192.168.5.110:8080/p/Zm9vYmFy/cfg000b82f55284.xml", "http://192.168.5.110:8080/…"),
    ("https://phone:s3cret@files.example/p/tok/", "https://files.example/…"),
    ("http://files.example/?token=abc", "http://files.example/…"),
    ("http://files.example/", "http://files.example/"),
])
def test_url_without_secret_keeps_only_where_it_points(url, shown):
    # what devices/{mac}/notify may say of the URL sent: pbx and operator read it
    assert url_without_secret(url) == shown


@pytest.mark.parametrize("url", [
    "http://192.168.5.110:8080/p/Zm9vYmFy/cfg000b82f55284.xml", "HTTPS://Files.Example:443/p/",
    "http://u:p@w@h.example/x", "http://h.example", "http://h.example?", "http://h.example/#frag",
    "http://h.example/?#", "http://h.example#/x", "http://h.example/p?q#f", "http://[::1]:8080/p/",
    "http://[::1/p", " http://h.example/p", "http://h.example/p q", "http://h\tx.example/p",
    "http://hé.example/p", "ftp+x.y-z://h/", "1http://h/p", "http:/h/p", "mailto:someone",
    "http://h.example:80", "http://h.example//", "//h.example/p", "",
])
def test_url_without_secret_reads_every_url_as_urlsplit_does(url):
    """The fast reading of the usual URL gives what urlsplit's gives, and any other URL is
    urlsplit's to read (or refuse)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        with pytest.raises(ValueError):
            url_without_secret(url)
        return
    host = parts.netloc.rpartition("@")[2]
    expected = f"{parts.scheme}://{host}" + ("/…" if parts.path.strip("/") or parts.query else "/")
    assert url_without_secret(url) == expected
