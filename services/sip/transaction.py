"""Non-INVITE transactions of RFC 3261 over an unreliable transport: the client's (§17.1.2),
and the server's answer cache and reply address (§17.2.2, §18.2.2).

Sans-I/O: nothing here owns a socket or a reactor. The caller sends the request once, creates a
:class:`ClientTransaction` with the time it did so, and from then on feeds it time (``advance``)
and the responses that match it (``receive``); each call returns what the caller must do next
(retransmit the same bytes, or hand a result to whoever wanted it). :class:`TransactionTable`
holds thousands of them with one deadline heap, so a driver needs a single timer, not one per
transaction, and matches responses by top-Via branch and CSeq as §17.1.3 asks.

On the server side, :class:`ServerTransactions` keeps each final answer for Timer J, so that a
retransmitted request gets the identical bytes again, and :func:`reply_address` says where a
response goes.

Times are plain floats in seconds from any monotonic clock the caller chooses.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import Generic, Iterator, NamedTuple, TypeVar

from services.expiring import Expiring
from services.sip.message import Request, Response, SipParseError, Via, parse_via


class State(Enum):
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass(frozen=True)
class Timers:
    """RFC 3261's timer values. Timer F is 64*T1 (32 s with the default T1) unless given;
    Timer K is T4 on UDP, the time a completed transaction keeps absorbing retransmitted
    responses."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_f: float | None = None

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0):
            raise ValueError("need T1 > 0, T2 >= T1 and T4 >= 0")
        if self.timer_f is not None and not self.timer_f > 0:
            raise ValueError("Timer F must be > 0")

    @property
    def f(self) -> float:
        return 64 * self.t1 if self.timer_f is None else self.timer_f


class Outcome(Enum):
    ACCEPTED = "accepted"  # 2xx
    REJECTED = "rejected"  # 3xx-6xx
    TIMEOUT = "timeout"  # Timer F fired with no final response


@dataclass(frozen=True)
class Result:
    """What the transaction user learns once, when the transaction ends for it."""

    outcome: Outcome
    status: int | None
    reason: str
    attempts: int  # transmissions of the request, the first one included
    started_at: float
    ended_at: float

    @property
    def elapsed(self) -> float:
        return self.ended_at - self.started_at


class Action(Enum):
    RETRANSMIT = "retransmit"  # send the request again, unchanged
    PROVISIONAL = "provisional"  # a 1xx arrived (the TU may note it)
    FINAL = "final"  # the result is ready: see ``ClientTransaction.result``
    ABSORBED = "absorbed"  # a retransmitted or late response, nothing to do


class Key(NamedTuple):
    """What a response must carry to match: the top Via's branch and the CSeq (number and
    method) of the request. A tuple: the table hashes and compares one per NOTIFY sent and per
    response, which a dataclass does in Python."""

    branch: str
    cseq: int
    method: str

    @classmethod
    def of(cls, branch: str, cseq: int, method: str) -> "Key":
        return cls(branch, cseq, method.upper())


class ClientTransaction:
    """One non-INVITE client transaction. Create it right after the first transmission."""

    def __init__(self, key: Key, now: float, timers: Timers = Timers()) -> None:
        self.key = key
        self.timers = timers
        self.state = State.TRYING
        self.started_at = now
        self.attempts = 1
        self.result: Result | None = None
        self.last_status: int | None = None
        self._interval = timers.t1
        self._timer_e: float | None = now + timers.t1
        self._timer_f: float | None = now + timers.f
        self._timer_k: float | None = None

    @property
    def done(self) -> bool:
        """The TU has its result (the transaction may still absorb responses until Timer K)."""
        return self.result is not None

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    def deadline(self) -> float | None:
        """The next time :meth:`advance` has something to do, or None once terminated."""
        due = self._timer_k  # the earliest set timer, asked on every heap move: no list built
        for timer in (self._timer_e, self._timer_f):
            if timer is not None and (due is None or timer < due):
                due = timer
        return due

    def advance(self, now: float) -> list[Action]:
        """Let time pass up to ``now``: fire every timer that is due, in order."""
        actions: list[Action] = []
        while True:
            due = self.deadline()
            if due is None or due > now:
                return actions
            if due == self._timer_f:
                # F before E at the same instant: a timed-out request is not sent again.
                self._finish(Outcome.TIMEOUT, None, "no response", due)
                self._terminate()
                actions.append(Action.FINAL)
            elif due == self._timer_e:
                self.attempts += 1
                actions.append(Action.RETRANSMIT)
                if self.state is State.TRYING:
                    self._interval = min(2 * self._interval, self.timers.t2)
                else:
                    self._interval = self.timers.t2
                self._timer_e = due + self._interval
            else:  # Timer K: stop absorbing retransmitted responses
                self._terminate()

    def receive(self, status: int, reason: str, now: float) -> Action:
        """A response matching :attr:`key` arrived."""
        if self.state in (State.COMPLETED, State.TERMINATED):
            return Action.ABSORBED
        self.last_status = status
        if 100 <= status < 200:
            self.state = State.PROCEEDING
            return Action.PROVISIONAL
        outcome = Outcome.ACCEPTED if 200 <= status < 300 else Outcome.REJECTED
        self._finish(outcome, status, reason, now)
        self._timer_e = self._timer_f = None
        self.state = State.COMPLETED
        self._timer_k = now + self.timers.t4
        if self.timers.t4 == 0:
            self._terminate()
        return Action.FINAL

    def cancel(self) -> None:
        """Stop at once (the service is stopping): no more retransmissions, no result."""
        self._terminate()

    def _finish(self, outcome: Outcome, status: int | None, reason: str, now: float) -> None:
        self.result = Result(outcome, status, reason, self.attempts, self.started_at, now)

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self._timer_e = self._timer_f = self._timer_k = None


T = TypeVar("T")


@dataclass
class Event(Generic[T]):
    """Something a driver must act on: retransmit ``entry.request``, or deliver a result."""

    action: Action
    entry: "Entry[T]"


@dataclass
class Entry(Generic[T]):
    transaction: ClientTransaction
    request: T  # whatever the driver needs to retransmit (bytes and address, typically)


# A heap item: (when, sequence number, Key). A plain tuple, compared in C; the sequence number
# is unique, so a Key is never compared.
_Due = tuple[float, int, Key]


class TransactionTable(Generic[T]):
    """Many transactions, one deadline heap. Stale heap entries are skipped lazily, so a
    transaction's deadline moving costs one push, not a search."""

    def __init__(self, timers: Timers = Timers()) -> None:
        self.timers = timers
        self._entries: dict[Key, Entry[T]] = {}
        self._heap: list[_Due] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))

    def get(self, key: Key) -> Entry[T] | None:
        return self._entries.get(key)

    def start(self, key: Key, request: T, now: float, timers: Timers | None = None) -> Entry[T]:
        """Register a transaction whose request was just sent for the first time; ``timers``,
        when given, are its own instead of the table's (a shorter Timer F, say)."""
        if key in self._entries:
            raise ValueError(f"a transaction with branch {key.branch!r} already exists")
        entry = Entry(ClientTransaction(key, now, timers or self.timers), request)
        self._entries[key] = entry
        self._schedule(entry)
        return entry

    def next_deadline(self) -> float | None:
        """When the driver should next call :meth:`advance`."""
        while self._heap:
            at, _, key = self._heap[0]
            entry = self._entries.get(key)
            if entry is not None and entry.transaction.deadline() == at:
                return at
            heapq.heappop(self._heap)
        return None

    def advance(self, now: float) -> list[Event[T]]:
        """Fire every timer due by ``now``, across all transactions."""
        events: list[Event[T]] = []
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            entry = self._entries.get(key)
            if entry is None or entry.transaction.deadline() != at:
                continue
            for action in entry.transaction.advance(now):
                events.append(Event(action, entry))
            self._settle(entry)
        return events

    def receive(self, key: Key, status: int, reason: str, now: float) -> Event[T] | None:
        """A response arrived; None when no transaction matches (a stray or very late one)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        action = entry.transaction.receive(status, reason, now)
        self._settle(entry)
        return Event(action, entry)

    def cancel_all(self) -> int:
        """Stop every transaction (no retransmission after this); returns how many were live."""
        live = sum(1 for e in self._entries.values() if not e.transaction.done)
        for entry in self._entries.values():
            entry.transaction.cancel()
        self._entries.clear()
        self._heap.clear()
        return live

    def _settle(self, entry: Entry[T]) -> None:
        if entry.transaction.terminated:
            self._entries.pop(entry.transaction.key, None)
        else:
            self._schedule(entry)

    def _schedule(self, entry: Entry[T]) -> None:
        due = entry.transaction.deadline()
        if due is not None:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, entry.transaction.key))


def response_key(response: Response) -> Key | None:
    """The :class:`Key` a response claims (top Via's branch, CSeq), or None when it has none
    usable: such a response can match no transaction of ours."""
    via = response.headers.get("Via")  # the top one, without splitting every Via header
    if not via:
        return None
    try:
        branch = parse_via(via).branch
        number, method = response.cseq
    except SipParseError:
        return None
    if not branch:
        return None
    return Key.of(branch, number, method)


# --- the server side -------------------------------------------------------------------------

# RFC 3261 §17.2.2: Timer J is 64*T1 on an unreliable transport (T1 = 500 ms, §17.1.1.1).
TIMER_J = 64 * Timers.t1

ServerKey = tuple[str, str, int]


def _answer_size(key: ServerKey, answer: bytes) -> int:
    return len(key[0]) + len(key[1]) + len(answer)


class ServerTransactions:
    """Answered non-INVITE requests, each kept for Timer J after its final response (§17.2.2:
    the Completed state), so a retransmission gets the identical bytes again. At most
    ``max_items`` are kept and at most ``max_bytes`` of keys and answers, oldest dropped first
    (:attr:`evicted` counts them): a flood, of many requests or of large ones, cannot make it
    grow. An evicted transaction's retransmission is answered anew, with the same bytes when
    the answer is a function of the request, as the listener's is."""

    def __init__(self, timer_j: float = TIMER_J, max_items: int = 200_000,
                 max_bytes: int | None = None) -> None:
        self._answers: Expiring[ServerKey, bytes] = Expiring(
            timer_j, max_items, max_bytes, size=_answer_size)

    @property
    def evicted(self) -> int:
        return self._answers.evicted

    @property
    def held_bytes(self) -> int:
        return self._answers.held_bytes

    @staticmethod
    def key(request: Request) -> ServerKey:
        """The request's transaction: the whole top Via (its branch and sent-by, §17.2.3),
        the Call-ID and the CSeq number, which also tells apart the transactions of a phone
        whose branch is not RFC 3261's unique one."""
        headers = request.headers
        return headers.get("via") or "", headers.get("call-id") or "", request.cseq[0]

    def answered(self, key: ServerKey, now: float) -> bytes | None:
        """The response already sent in this transaction, if it is still Completed."""
        return self._answers.get(key, now)

    def answer(self, key: ServerKey, response: bytes, now: float) -> None:
        self._answers.put(key, response, now)

    def __len__(self) -> int:
        return len(self._answers)


def reply_address(via: Via, source: tuple[str, int]) -> tuple[str, int]:
    """Where a response over UDP goes (RFC 3261 §18.2.2 and RFC 3581 §4): the request's
    source address, and its source port when the top Via carries ``rport``, else the Via's
    sent-by port (5060 when it names none)."""
    if "rport" in via.params:
        return source
    return source[0], via.port or 5060
