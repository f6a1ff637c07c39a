"""The listener's sans-I/O core: answers, discoveries, dedup, MACs, vendors, rate limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener import mac as macs
from listener.discovery import SubscribeCore
from listener.ratelimit import RateLimiter
from listener.vendors import identify
from services.messages import Discovered
from services.sip.message import Response, parse, parse_name_addr, parse_via
from tests.test_sip_message import GRANDSTREAM, SAMPLES, SNOM, VENDER, YEALINK

PHONE = ("192.168.5.175", 5080)
IFACE = "192.168.5.110"


def core(**kw) -> SubscribeCore:
    return SubscribeCore(clock_iso=lambda: "2026-11-27T03:00:00.000Z", secret=b"k" * 16, **kw)


def rebranch(data: bytes, branch: str) -> bytes:
    return data.replace(b"z9hG4bK1686351121", branch.encode())


def recall(data: bytes, call_id: str) -> bytes:
    return data.replace(b"1848599395-5080-1@BJC.BGI.F.BHF", call_id.encode())


def test_seed_subscribe_is_answered_and_discovered_in_full():
    c = core()
    out = c.handle(GRANDSTREAM, PHONE, IFACE, 100.0)
    assert out.dest == PHONE
    reply = parse(out.reply)
    assert isinstance(reply, Response) and (reply.status, reply.reason) == (200, "OK")
    assert reply.headers.get("Expires") == "0"
    assert reply.headers.get("Contact") == f"<sip:{IFACE}:5060>"
    top = parse_via(reply.headers.get("Via"))
    assert top.params["rport"] == "5080" and top.params["received"] == "192.168.5.175"
    to_tag = parse_name_addr(reply.headers.get("To")).tag
    d = out.discovered
    assert d == Discovered(
        mac="000b82f55284", vendor="grandstream", model="GRP2614", firmware="1.0.0.31",
        ip="192.168.5.175", port=5080, contact="<sip:192.168.5.175:5080>",
        user_agent="Grandstream GRP2614 1.0.0.31", call_id="1848599395-5080-1@BJC.BGI.F.BHF",
        from_tag="1990948743", to_tag=to_tag, seen_at="2026-11-27T03:00:00.000Z", cseq=20000,
        request_uri="sip:MAC%3A000B82F55284@224.0.1.75",
        from_uri="<sip:MAC%3A000B82F55284@224.0.1.75>;tag=1990948743",
        to_uri="<sip:MAC%3A000B82F55284@224.0.1.75>",
        event={"profile-type": "device", "vendor": "Grandstream", "model": "GRP2614",
               "version": "1.0.0.31"},
        interface=IFACE, boot=1,
    )
    # the payload the notifier reads round-trips through the contract's JSON
    assert Discovered.from_json(d.to_json()) == d


def test_202_when_configured():
    reply = parse(core(status=202).handle(GRANDSTREAM, PHONE, IFACE, 0.0).reply)
    assert (reply.status, reply.reason) == (202, "Accepted")


def test_answer_goes_to_the_source_port_with_rport_and_to_sent_by_without():
    c = core()
    assert c.handle(YEALINK, ("10.0.0.12", 5059), IFACE, 0.0).dest == ("10.0.0.12", 5059)
    # behind a NAT: source port differs from the Via; rport says use the source
    assert c.handle(rebranch(GRANDSTREAM, "z9hG4bKnat"), ("10.1.1.1", 40000), IFACE, 0.0).dest == ("10.1.1.1", 40000)
    no_rport = VENDER.replace(b";rport", b"")
    assert c.handle(no_rport, ("10.0.0.14", 33333), IFACE, 0.0).dest == ("10.0.0.14", 5060)


def test_retransmission_gets_identical_bytes_and_no_second_discovery():
    c = core()
    first = c.handle(GRANDSTREAM, PHONE, IFACE, 0.0)
    again = c.handle(GRANDSTREAM, PHONE, IFACE, 0.5)
    assert again.reply == first.reply and again.discovered is None
    assert c.counters["retransmissions"] == 1 and c.counters["answered"] == 2
    assert c.counters["published"] == 1


def test_five_subscribes_of_one_boot_publish_once_and_share_the_to_tag():
    c = core()
    outs = [c.handle(rebranch(GRANDSTREAM, f"z9hG4bK{i}"), PHONE, IFACE, i) for i in range(5)]
    assert all(o.reply for o in outs)
    assert [o.discovered is not None for o in outs] == [True, False, False, False, False]
    tags = {parse_name_addr(parse(o.reply).headers.get("To")).tag for o in outs}
    assert tags == {outs[0].discovered.to_tag}
    assert c.counters["duplicates"] == 4


def test_new_call_ids_within_the_window_are_the_same_boot_after_it_a_new_one():
    c = core(window=30.0)
    assert c.handle(GRANDSTREAM, PHONE, IFACE, 0.0).discovered.boot == 1
    within = c.handle(recall(rebranch(GRANDSTREAM, "z9hG4bKb"), "second@x"), PHONE, IFACE, 10.0)
    assert within.reply and within.discovered is None
    reboot = c.handle(recall(rebranch(GRANDSTREAM, "z9hG4bKc"), "third@x"), PHONE, IFACE, 95.0)
    assert reboot.discovered.boot == 2 and reboot.discovered.call_id == "third@x"
    # the Call-ID of an earlier boot stays known: a late retry of it is not a new boot
    late = c.handle(recall(rebranch(GRANDSTREAM, "z9hG4bKd"), "second@x"), PHONE, IFACE, 200.0)
    assert late.discovered is None


def test_the_same_mac_from_another_address_within_the_window_is_published_at_once():
    # A host claiming the phone's MAC (or the phone itself, moved): the fileserver's enrolment
    # must see both addresses to raise the conflict, whichever came first.
    c = core(window=30.0)
    assert c.handle(GRANDSTREAM, ("192.168.5.66", 5080), IFACE, 0.0).discovered.ip == "192.168.5.66"
    real = c.handle(recall(rebranch(GRANDSTREAM, "z9hG4bKb"), "second@x"), PHONE, IFACE, 2.0)
    assert real.discovered is not None and real.discovered.ip == PHONE[0]
    # its own further Call-IDs within the window are its boot, as before
    again = c.handle(recall(rebranch(GRANDSTREAM, "z9hG4bKc"), "third@x"), PHONE, IFACE, 3.0)
    assert again.reply and again.discovered is None


def test_remembered_boots_survive_a_restart():
    c = core()
    c.remember("000b82f55284", "1848599395-5080-1@BJC.BGI.F.BHF", 3, 0.0)
    assert c.handle(GRANDSTREAM, PHONE, IFACE, 1.0).discovered is None
    nxt = c.handle(recall(GRANDSTREAM, "new@x"), PHONE, IFACE, 2.0)
    assert nxt.discovered.boot == 4


def test_other_event_gets_489_with_allow_events():
    c = core()
    out = c.handle(GRANDSTREAM.replace(b"Event: ua-profile", b"Event: presence"), PHONE, IFACE, 0.0)
    reply = parse(out.reply)
    assert reply.status == 489 and reply.headers.get("Allow-Events") == "ua-profile"
    assert parse_name_addr(reply.headers.get("To")).tag
    assert out.discovered is None and c.counters["bad_event"] == 1
    no_event = GRANDSTREAM.replace(b'Event: ua-profile;profile-type="device";', b"X-Event: ")
    assert parse(c.handle(no_event, PHONE, IFACE, 0.0).reply).status == 489


@pytest.mark.parametrize("data, counter", [
    (GRANDSTREAM.replace(b"SUBSCRIBE sip:", b"OPTIONS sip:").replace(b"20000 SUBSCRIBE", b"20000 OPTIONS"), "ignored"),
    (b"SIP/2.0 200 OK\r\n" + GRANDSTREAM.split(b"\r\n", 1)[1], "ignored"),
    (b"\x16\x03\x01garbage", "malformed"),
    (GRANDSTREAM[:200], "malformed"),
    (GRANDSTREAM.replace(b"MAC%3A000B82F55284", b"00000001"), "no_mac"),
    (GRANDSTREAM.replace(b"Via: SIP/2.0/UDP", b"Via: junk"), "malformed"),
])
def test_what_is_dropped_is_counted(data, counter):
    c = core()
    out = c.handle(data, PHONE, IFACE, 0.0)
    assert out.reply is None and out.discovered is None
    assert c.counters[counter] == 1 and c.counters["received"] == 1


def test_other_vendors():
    c = core()
    y = c.handle(YEALINK, ("10.0.0.12", 5059), IFACE, 0.0).discovered
    assert (y.mac, y.vendor, y.model, y.firmware, y.port) == ("001565f4f9e1", "yealink", "SIP-T46S", "66.86.0.15", 5059)
    s = c.handle(SNOM, ("10.0.0.13", 5060), IFACE, 0.0).discovered
    assert (s.mac, s.vendor, s.model, s.firmware) == ("000413a1b2c3", "snom", "D765", "10.1.33.33")
    u = c.handle(VENDER, ("10.0.0.14", 5060), IFACE, 0.0).discovered
    assert (u.mac, u.vendor, u.model, u.firmware) == ("001ae8123456", "unify", "CP400", "V1 R6.3")


@pytest.mark.parametrize("user, expected", [
    ("MAC%3A000B82F55284", "000b82f55284"),
    ("MAC%3a000b82f55284", "000b82f55284"),
    ("MAC:000B82F55284", "000b82f55284"),
    ("MAC=000B82F55284", "000b82f55284"),
    ("MAC001565f4f9e1", "001565f4f9e1"),
    ("mac%3A00-0B-82-F5-52-84", "000b82f55284"),
    ("000b82f55284", "000b82f55284"),
    ("MAC%3A000B82F5528", None),  # 11 digits
    ("MAC%3A000B82F5528G", None),
    ("MAC%3A000000000000", None),
    ("MAC%3Affffffffffff", None),  # broadcast, not a phone
    ("MAC%3A010B82F55284", None),  # group bit set
    ("1001", None),
])
def test_mac_spellings(user, expected):
    assert macs.from_user(f"sip:{user}@224.0.1.75") == expected


def test_mac_falls_back_to_the_from_user():
    assert macs.from_subscribe("sip:224.0.1.75:5060", "<sip:MAC%3A000B82F55284@10.0.0.1>;tag=1") == "000b82f55284"
    assert macs.from_subscribe("sip:224.0.1.75:5060", "<sip:00000001@10.0.0.1>;tag=1") is None


def test_vendor_from_oui_and_user_agent_when_the_event_says_oem():
    assert identify({"vendor": "OEM", "model": "OEM"}, "", "000413a1b2c3").vendor == "snom"
    assert identify({"vendor": "OEM"}, "", "c074ad000001").vendor == "grandstream"
    assert identify({}, "", "123456000001").vendor == "unknown"
    who = identify({"vendor": ""}, "Fanvil X6U 2.12.1", "0c383e000001")
    assert (who.vendor, who.model, who.firmware) == ("fanvil", "X6U", "2.12.1")
    who = identify({}, "PolycomVVX-VVX_411-UA/6.3.0.14929", "0004f2000001")
    assert (who.vendor, who.model, who.firmware) == ("polycom", "VVX_411", "6.3.0.14929")
    assert identify({"vendor": "Acme Phones Inc"}, "", "123456000001").vendor == "acme-phones-inc"


def test_flood_from_one_source_is_limited_others_still_answered():
    c = core(rate=10.0, burst=20.0)
    answered = sum(bool(c.handle(rebranch(GRANDSTREAM, f"z9hG4bK{i}"), PHONE, IFACE, 0.0).reply)
                   for i in range(500))
    assert answered == 20
    assert c.counters["rate_limited"] == 500 - answered
    assert c.handle(YEALINK, ("10.0.0.12", 5059), IFACE, 0.5).discovered is not None
    # one second later the flooder has 10 more tokens
    later = sum(bool(c.handle(rebranch(GRANDSTREAM, f"z9hG4bKl{i}"), PHONE, IFACE, 1.0).reply)
                for i in range(50))
    assert later == 10


def test_rate_limiter_table_is_bounded():
    r = RateLimiter(1.0, 1.0, max_keys=100)
    for i in range(1000):
        assert r.allow(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(r) == 100


def test_tracking_tables_are_bounded():
    c = core(max_tracked=50, rate=1e9, burst=1e9)
    for i in range(500):
        c.handle(recall(rebranch(GRANDSTREAM, f"z9hG4bK{i}"), f"c{i}@x"), PHONE, IFACE, float(i) * 100)
    assert len(c._transactions) <= 50 and len(c._call_ids) <= 50 and len(c._recent_macs) <= 50


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=1500),
                 st.builds(lambda s, i, b: s[:i] + b + s[i:], st.sampled_from(list(SAMPLES.values())),
                           st.integers(0, 800), st.binary(max_size=20))))
def test_no_datagram_makes_the_core_raise(data):
    core().handle(data, PHONE, IFACE, 0.0)


def test_fast_discovery_encoding_is_the_payload_encoding():
    from services.messages import encode_flat

    for data in SAMPLES.values():
        d = core().handle(data, PHONE, IFACE, 0.0).discovered
        assert encode_flat(d) == d.to_json()


def test_subscribe_inside_a_dialog_keeps_and_publishes_its_to_tag():
    data = GRANDSTREAM.replace(b"To: <sip:MAC%3A000B82F55284@224.0.1.75>",
                               b"To: <sip:MAC%3A000B82F55284@224.0.1.75>;tag=dialog1")
    out = core().handle(data, PHONE, IFACE, 0.0)
    assert parse_name_addr(parse(out.reply).headers.get("To")).tag == "dialog1"
    assert out.discovered.to_tag == "dialog1"
