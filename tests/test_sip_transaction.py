"""RFC 3261 §17.1.2 non-INVITE client transaction, driven by twisted's task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet import task

from services.sip.message import parse
from services.sip.transaction import (
    Action, ClientTransaction, Key, Outcome, State, Timers, TransactionTable, response_key,
)

KEY = Key.of("z9hG4bKabc", 1, "NOTIFY")


class Driver:
    """What a network driver does with a table: one timer for the earliest deadline, and a
    record of every transmission at its clock time."""

    def __init__(self, timers: Timers = Timers()) -> None:
        self.clock = task.Clock()
        self.table: TransactionTable[str] = TransactionTable(timers)
        self.sent: list[tuple[float, str]] = []
        self.results: dict[str, object] = {}
        self._call = None

    def send(self, name: str, key: Key) -> None:
        self.sent.append((self.clock.seconds(), name))
        self.table.start(key, name, self.clock.seconds())
        self._rearm()

    def receive(self, key: Key, status: int, reason: str = "") -> Action | None:
        event = self.table.receive(key, status, reason, self.clock.seconds())
        self._handle([event] if event else [])
        return event.action if event else None

    def _fire(self) -> None:
        self._call = None
        self._handle(self.table.advance(self.clock.seconds()))

    def _handle(self, events) -> None:
        for event in events:
            if event.action is Action.RETRANSMIT:
                self.sent.append((self.clock.seconds(), event.entry.request))
            elif event.action is Action.FINAL:
                self.results[event.entry.request] = event.entry.transaction.result
        self._rearm()

    def _rearm(self) -> None:
        due = self.table.next_deadline()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if due is not None:
            self._call = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._fire)

    def times(self, name: str = "a") -> list[float]:
        return [t for t, n in self.sent if n == name]


def run_until(driver: Driver, end: float) -> None:
    """Advance the clock to each scheduled call exactly, then to ``end``."""
    clock = driver.clock
    while True:
        calls = [c.getTime() for c in clock.getDelayedCalls()]
        nxt = min(calls) if calls else None
        if nxt is None or nxt > end:
            clock.advance(max(0.0, end - clock.seconds()))
            return
        clock.advance(max(0.0, nxt - clock.seconds()))


def test_retransmits_at_t1_doubling_to_t2_and_times_out_at_timer_f():
    d = Driver()
    d.send("a", KEY)
    run_until(d, 40)
    assert d.times() == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
    result = d.results["a"]
    assert result.outcome is Outcome.TIMEOUT
    assert result.ended_at == pytest.approx(32.0)
    assert result.attempts == 11
    assert result.status is None
    assert len(d.table) == 0  # gone: no timer left behind
    assert d.clock.getDelayedCalls() == []


def test_final_response_stops_retransmissions():
    d = Driver()
    d.send("a", KEY)
    run_until(d, 2.0)  # sent at 0, 0.5, 1.5
    assert d.receive(KEY, 200, "OK") is Action.FINAL
    run_until(d, 40)
    assert d.times() == pytest.approx([0, 0.5, 1.5])
    result = d.results["a"]
    assert (result.outcome, result.status, result.reason, result.attempts) == (Outcome.ACCEPTED, 200, "OK", 3)
    assert result.elapsed == pytest.approx(2.0)


@pytest.mark.parametrize("status", [302, 404, 488, 500, 603])
def test_3xx_to_6xx_reject_with_code_and_reason(status):
    d = Driver()
    d.send("a", KEY)
    d.clock.advance(0.01)
    d.receive(KEY, status, "Not Acceptable Here")
    result = d.results["a"]
    assert result.outcome is Outcome.REJECTED
    assert result.status == status
    assert result.reason == "Not Acceptable Here"
    assert result.attempts == 1


def test_provisional_moves_retransmissions_to_t2():
    d = Driver()
    d.send("a", KEY)
    run_until(d, 0.7)  # 0, 0.5
    assert d.receive(KEY, 100, "Trying") is Action.PROVISIONAL
    assert d.table.get(KEY).transaction.state is State.PROCEEDING
    run_until(d, 14)
    # Timer E runs out as scheduled (1.5), then every T2 = 4 s.
    assert d.times() == pytest.approx([0, 0.5, 1.5, 5.5, 9.5, 13.5])
    d.receive(KEY, 180, "Ringing")  # more provisionals change nothing
    d.receive(KEY, 200, "OK")
    run_until(d, 40)
    assert d.times() == pytest.approx([0, 0.5, 1.5, 5.5, 9.5, 13.5])
    assert d.results["a"].outcome is Outcome.ACCEPTED


def test_provisional_then_silence_times_out_at_32s():
    d = Driver()
    d.send("a", KEY)
    d.clock.advance(0.1)
    d.receive(KEY, 100, "Trying")
    run_until(d, 40)
    assert d.results["a"].outcome is Outcome.TIMEOUT
    assert d.results["a"].ended_at == pytest.approx(32.0)
    # E was due at 0.5; from then on every T2, and nothing at or after 32.
    assert d.times() == pytest.approx([0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5])
    assert d.results["a"].attempts == 9


def test_duplicate_final_is_absorbed_until_timer_k_then_unmatched():
    d = Driver()
    d.send("a", KEY)
    d.receive(KEY, 200, "OK")
    first = d.results["a"]
    assert d.receive(KEY, 200, "OK") is Action.ABSORBED
    assert d.receive(KEY, 486, "Busy") is Action.ABSORBED
    assert d.results["a"] is first  # the TU hears once
    d.clock.advance(5.0)  # Timer K = T4 on UDP
    assert len(d.table) == 0
    assert d.receive(KEY, 200, "OK") is None  # late: matches nothing, counted as stray by the driver


def test_response_after_timeout_matches_nothing():
    d = Driver()
    d.send("a", KEY)
    run_until(d, 33)
    assert d.receive(KEY, 200, "OK") is None
    assert d.results["a"].outcome is Outcome.TIMEOUT


def test_matching_needs_branch_and_cseq():
    d = Driver()
    d.send("a", KEY)
    assert d.receive(Key.of("z9hG4bKother", 1, "NOTIFY"), 200) is None
    assert d.receive(Key.of("z9hG4bKabc", 2, "NOTIFY"), 200) is None
    assert d.receive(Key.of("z9hG4bKabc", 1, "SUBSCRIBE"), 200) is None
    assert "a" not in d.results
    assert d.receive(Key.of("z9hG4bKabc", 1, "notify"), 200) is Action.FINAL


def test_many_transactions_share_one_timer():
    d = Driver(Timers(t1=0.5))
    keys = [Key.of(f"z9hG4bK{i}", 1, "NOTIFY") for i in range(2000)]
    for i, key in enumerate(keys):
        d.send(f"t{i}", key)
        if i % 100 == 0:
            d.clock.advance(0.001)
    for key in keys[::2]:
        d.receive(key, 200, "OK")
    run_until(d, 40)
    assert len(d.clock.getDelayedCalls()) == 0
    outcomes = [d.results[f"t{i}"].outcome for i in range(2000)]
    assert outcomes.count(Outcome.ACCEPTED) == 1000
    assert outcomes.count(Outcome.TIMEOUT) == 1000
    assert all(d.results[f"t{i}"].attempts == 11 for i in range(1, 2000, 2))


def test_cancel_all_stops_retransmissions():
    d = Driver()
    d.send("a", KEY)
    d.send("b", Key.of("z9hG4bKb", 1, "NOTIFY"))
    run_until(d, 0.6)
    assert d.table.cancel_all() == 2
    d._rearm()
    run_until(d, 40)
    assert d.times("a") == pytest.approx([0, 0.5])
    assert d.results == {}


def test_short_timers_for_tests_and_lans():
    timers = Timers(t1=0.01, t2=0.08)
    assert timers.f == pytest.approx(0.64)
    tx = ClientTransaction(KEY, 100.0, timers)
    actions = tx.advance(100.0 + 0.64)
    assert actions.count(Action.RETRANSMIT) == 1 + 1 + 1 + 7  # .01 .03 .07 then every .08 up to .63
    assert actions[-1] is Action.FINAL and tx.result.outcome is Outcome.TIMEOUT


def test_bad_timers_refused():
    with pytest.raises(ValueError):
        Timers(t1=0)
    with pytest.raises(ValueError):
        Timers(t1=1, t2=0.5)


def test_response_key_reads_top_via_and_cseq():
    raw = (b"SIP/2.0 200 OK\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKabc;rport=40000, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKx\r\n"
           b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 NOTIFY\r\n"
           b"Content-Length: 0\r\n\r\n")
    assert response_key(parse(raw)) == KEY
    no_branch = raw.replace(b";branch=z9hG4bKabc", b"")
    assert response_key(parse(no_branch)) is None


# --- the server side ---------------------------------------------------------------------------


def _subscribe(via: str, cseq: int = 1) -> bytes:
    return (f"SUBSCRIBE sip:MAC%3A000b82f55284@224.0.1.75 SIP/2.0\r\nVia: {via}\r\n"
            "From: <sip:MAC%3A000b82f55284@10.0.0.5>;tag=f1\r\nTo: <sip:MAC%3A000b82f55284@224.0.1.75>\r\n"
            f"Call-ID: c1@10.0.0.5\r\nCSeq: {cseq} SUBSCRIBE\r\nEvent: ua-profile\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_reply_goes_to_the_source_port_with_rport_else_to_the_via_port():
    from services.sip import reply_address
    from services.sip.message import parse_via

    source = ("10.0.0.5", 40000)
    assert reply_address(parse_via("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1;rport"), source) == source
    assert reply_address(parse_via("SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK1"), source) == ("10.0.0.5", 5062)
    # no port in sent-by: SIP's default, and never the Via's host (a spoofed Via cannot redirect)
    assert reply_address(parse_via("SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1"), source) == ("10.0.0.5", 5060)


def test_a_retransmitted_request_gets_the_same_answer_until_timer_j():
    from services.sip import TIMER_J, ServerTransactions

    assert TIMER_J == 32.0  # 64*T1 (RFC 3261 §17.2.2)
    table = ServerTransactions()
    request = parse(_subscribe("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa"))
    key = table.key(request)
    assert table.answered(key, 0.0) is None
    table.answer(key, b"SIP/2.0 200 OK...", 0.0)
    assert table.answered(table.key(parse(_subscribe("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa"))),
                          TIMER_J - 0.1) == b"SIP/2.0 200 OK..."
    assert table.answered(key, TIMER_J) is None
    # another CSeq, or another branch, is another transaction
    assert table.key(parse(_subscribe("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa", 2))) != key
    assert table.key(parse(_subscribe("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKb"))) != key


def test_a_flood_of_transactions_keeps_the_answer_cache_bounded():
    from services.sip import ServerTransactions

    table = ServerTransactions(max_items=100)
    for i in range(1000):
        table.answer(("via", f"call{i}", 1), b"x", 0.0)
    assert len(table) == 100
    assert table.answered(("via", "call999", 1), 1.0) == b"x"
    assert table.answered(("via", "call0", 1), 1.0) is None


def test_large_answers_keep_the_answer_cache_within_its_bytes_and_evictions_are_counted():
    from services.expiring import ENTRY_OVERHEAD
    from services.sip import ServerTransactions

    table = ServerTransactions(max_bytes=100_000)
    for i in range(100):
        table.answer(("via", f"call{i}", 1), b"x" * 10_000, float(i))
    assert table.held_bytes <= 100_000
    assert len(table) == 100_000 // (10_000 + len("via") + len("call99") + ENTRY_OVERHEAD)
    kept = len(table)
    assert table.evicted == 100 - kept
    assert table.answered(("via", "call99", 1), 99.0) == b"x" * 10_000
    assert table.answered(("via", "call0", 1), 99.0) is None
    # entries that expired by Timer J are not evictions
    table.answer(("via", "late", 1), b"y", 1000.0)
    assert (len(table), table.evicted) == (1, 100 - kept)
