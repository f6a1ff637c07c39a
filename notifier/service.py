"""The notifier: from retained discoveries, publications and downloads on MQTT to NOTIFYs on the
wire, and their outcome back on ``devices/{mac}/notify``.

Each ``notify`` it publishes is kept in memory by a :class:`Keeper`, which puts back the ones a
broker restarted from an older save lost (a restart of the notifier itself forgets them: the
outcome of a NOTIFY is a report, the sent log in ``notifier.db`` is what matters)."""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from services import netif
from services.burstlog import BurstLog
from services.mqtt import Incoming
from services.messages import (
    Discovered, Fetched, NotifyStatus, Payload, PayloadError, Published, ResyncCredentials, encode_flat,
    now_iso, url_without_secret,
)
from services.sip.digest import DigestError, challenges, choose, retry_request
from services.sip.message import MAX_DATAGRAM, Request, new_branch
from services.retained import Keeper
from services.runner import Context
from services.settings import SIP_INTERFACE, SettingError
from services.sip.transaction import Key, Outcome, Result, Timers

from notifier import build, decide
from notifier.protocol import Answer, NotifyEndpoint
from notifier.settings import IN_DIALOG
from notifier.state import Provision, Store, epoch

log = Logger(namespace="notifier")

P = TypeVar("P", bound=Payload)

# A ``fetched`` that says a phone runs our config, as the fileserver (or any JSON encoder) writes
# it. Half the messages of a boot storm are first downloads, ``provisioned`` false: this spares
# them the topic, JSON and payload parsing (a phone's escaped key would only be missed).
_PROVISIONED = re.compile(rb'"provisioned"\s*:\s*true')

# Requests sent with credentials per NOTIFY: one, and a second only when the phone says the
# first one's nonce was stale (RFC 7616 §3.3: the password was right). Never a loop.
MAX_AUTHENTICATED = 2
# Timer F, in T1s, of a NOTIFY to an address that never answered us (see Notifier.__init__).
UNPROVEN_TIMER_F = 8
# Addresses remembered as having answered: more than a site's phones.
MAX_ANSWERED = 65_536
# NOTIFY statuses are held and published together. One status published alone cost a reactor
# turn, a write to the broker and, back, a PUBACK read alone: at 500 phones/s about a sixth of
# the notifier's CPU per phone (docs/BENCHMARKS.md, "Notifier hop"). Held, a phone's ``sent``
# and its outcome (a phone answers within milliseconds) and those of the phones around it
# leave in one write, and their PUBACKs come back in one read. They go with the first outcome
# (an answer) that comes STATUS_AFTER or more after the oldest of them: right after a phone's
# answer, when the reactor has nothing of that phone left to do and the next phone is least
# likely to be waiting (a timer would fire at any moment of the next phone's path); and at the
# latest STATUS_WAIT after it, when no answer comes. Nothing acts on a status (the console,
# the PBX and operators watch it): no NOTIFY waits for one.
STATUS_AFTER = 0.005  # seconds
STATUS_WAIT = 0.02  # seconds


@dataclass
class Attempt:
    """One NOTIFY, across the transactions a challenge adds (RFC 3261 §22.2)."""

    plan: decide.Plan
    request: Request
    address: tuple[str, int]
    endpoint: NotifyEndpoint
    in_dialog: bool
    key: Key | None = None  # of ``request``, when its builder knows it
    # for the statuses, filled in once the first datagram left (Notifier._execute)
    call_id: str = ""
    topic: str = ""  # its device's ``notify``
    url: str = ""  # as the statuses show it (no secret)
    attempts: int = 0  # transmissions of the earlier requests
    started_at: float | None = None  # of the first transaction
    authenticated: int = 0  # requests sent with credentials


class Notifier:
    def __init__(self, ctx: Context, store: Store, clock: Any = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.reactor = ctx.reactor
        self.clock = clock if clock is not None else ctx.reactor
        self.wall = wall
        self.counters_ = ctx.counters
        self.store = store
        self.timers = Timers(t1=self.settings.sip_t1, t2=self.settings.sip_t2)
        # For an address that never answered us, of a phone we never provisioned: the source
        # of a SUBSCRIBE can be spoofed, and Timer F's 11 NOTIFYs over 32 s would make us a
        # reflector aimed at whoever owns it. 8*T1 is 4 transmissions over 4 s: a real phone
        # answers the first in milliseconds, and a lossy LAN still gets three more tries.
        self.unproven_timers = Timers(t1=self.settings.sip_t1, t2=self.settings.sip_t2,
                                      timer_f=UNPROVEN_TIMER_F * self.settings.sip_t1)
        # addresses that answered a NOTIFY of ours (in memory; bounded, oldest forgotten)
        self.answered: OrderedDict[str, None] = OrderedDict()
        # MAC -> the address its provisioned phone last downloaded from (in memory)
        self.provisioned_at: dict[str, str] = {}
        self.shard = self.settings.notifier_shard
        self._log_sent = BurstLog(self.reactor, lambda count: log.info(
            "sent {count} more NOTIFYs in a burst (not logged one by one; each phone's outcome is "
            "on its devices/{{mac}}/notify)", count=count))
        self._log_held = BurstLog(self.reactor, lambda count: log.warn(
            "held {count} more NOTIFYs for a second address of an enrolment epoch (counter "
            "held_second_address)", count=count))
        self.keeper = Keeper(ctx, ctx.topics.devices("notify"))
        self.endpoints: dict[str, NotifyEndpoint] = {}
        self._errored: set[str] = set()  # MACs whose error topic holds a refusal we reported
        self._ports: list[Any] = []
        self._stopped = False
        # statuses (and what goes with them), held to be published together (STATUS_AFTER)
        self._reports: list[Callable[[], None]] = []
        self._reports_call: Any = None
        self._held_since = 0.0  # when the oldest of them was held
        self._kept: dict[str, bytes] = {}  # topic -> the status last published there

    def start(self) -> "Notifier":
        interface = self.settings.sip_interface
        try:
            addresses = netif.resolve(interface)
        except ValueError as exc:
            raise SettingError(SIP_INTERFACE, ",".join(interface), str(exc)) from None
        for address in addresses:
            self._open(address)
        if not self.endpoints:
            raise SettingError(SIP_INTERFACE, ",".join(interface), "no IPv4 address to send NOTIFYs from")
        topics = self.ctx.topics
        bus = self.ctx.bus
        # Retained messages come back per subscription, in this order: what is published and
        # fetched is known before the discoveries are replayed and judged.
        bus.subscribe(topics.devices("resync"), self._on_resync)
        # the working URLs: under the deployment ACL only we (and the fileserver) read ``published``;
        # the PBX and the operators read ``files`` (the same revision, no URL)
        bus.subscribe(topics.devices("published"), self._on_published)
        bus.subscribe(topics.devices("fetched"), self._on_fetched)
        bus.subscribe(topics.devices("discovered"), self._on_discovered)
        self.keeper.start()
        for address, endpoint in self.endpoints.items():
            log.info("sending NOTIFYs from {host}:{port}", host=address, port=endpoint.local[1])
        if self.shard.count > 1:
            log.info("shard {shard}: NOTIFYs only for the MACs with crc32(mac) mod {n} = {i}",
                     shard=str(self.shard), n=self.shard.count, i=self.shard.index - 1)
        return self

    # --- life ---
    def _open(self, address: str) -> NotifyEndpoint:
        endpoint = NotifyEndpoint(self.clock, self.timers, self.counters_)
        # answers (200 OK, 401 with a long challenge) are read whole, like the listener's SUBSCRIBEs
        port = self.reactor.listenUDP(self.settings.notify_port, endpoint, interface=address,
                                      maxPacketSize=MAX_DATAGRAM)
        self._ports.append(port)
        self.endpoints[address] = endpoint
        return endpoint

    def stop(self) -> Any:
        self._report()
        self._stopped = True
        self.keeper.stop()
        self._log_sent.flush()
        self._log_held.flush()
        cut = sum(endpoint.stop() for endpoint in self.endpoints.values())
        if cut:
            log.info("stopped with {count} NOTIFY transactions unfinished", count=cut)
        ports, self._ports = self._ports, []
        self.store.close()
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def counters(self) -> dict[str, int]:
        return {**self.store.summary(),
                "notify_in_flight": sum(len(e.table) for e in self.endpoints.values())}

    # --- inputs ---
    def _mac(self, msg: Incoming) -> str | None:
        info = self.ctx.topics.parse(msg.topic)
        if self._stopped or info is None or not info.mac_ok:
            return None
        if msg.error is not None:
            self._bad(msg, msg.error)
            return None
        return info.mac

    def _decode(self, msg: Incoming, kind: type[P]) -> P | None:
        try:
            return kind.from_json(msg.data)
        except PayloadError as exc:
            self._bad(msg, str(exc))
            return None

    def _bad(self, msg: Incoming, why: str) -> None:
        self.counters_["bad_payloads"] += 1
        log.warn("ignored {topic}: {why}", topic=msg.topic, why=why)

    def _on_discovered(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        if msg.empty:
            self.store.drop_device(mac)
            return
        discovered = self._decode(msg, Discovered)
        if discovered is None:
            return
        now = self.wall()
        device = self.store.put_device(mac, discovered, epoch(discovered.seen_at, now), msg.raw)
        plan = decide.after_discovery(mac, device, self.store.published.get(mac),
                                      self.store.provisions.get(mac), self.store.sent, now,
                                      self.settings.notify_window, self.store.addressed.get(mac))
        if plan is not None:
            self._execute(plan)

    def _on_published(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        if msg.empty:
            self.store.drop_published(mac)
            return
        published = self._decode(msg, Published)
        if published is None:
            return
        previous = self.store.put_published(mac, published, msg.raw)
        plan = decide.after_publish(mac, self.store.devices.get(mac), published, previous,
                                    self.store.provisions.get(mac), self.store.sent, self.wall(),
                                    self.settings.notify_window, self.store.addressed.get(mac))
        if plan is not None:
            self._execute(plan)

    def _on_fetched(self, msg: Incoming) -> None:
        if _PROVISIONED.search(msg.raw) is None and not self._keeps_provision(msg.topic):
            # Not a running phone, and none before: its Provision would decide nothing.
            return
        mac = self._mac(msg)
        if mac is None or msg.empty:
            return
        fetched = self._decode(msg, Fetched)
        if fetched is None:
            return
        old = self.store.provisions.get(mac)
        # Once a phone ran a config of ours it stays a working phone: a later first download
        # of a new revision (provisioned false until its reboot) does not undo that.
        provisioned = fetched.provisioned or (old is not None and old.provisioned)
        if provisioned and fetched.client:
            self.provisioned_at[mac] = fetched.client
        revision = fetched.revision if fetched.revision is not None else (old.revision if old else None)
        self.store.put_provision(mac, Provision(provisioned, revision, epoch(fetched.at, self.wall())))

    def _on_resync(self, msg: Incoming) -> None:
        mac = self._mac(msg)
        if mac is None:
            return
        if msg.empty:
            self.store.drop_credentials(mac)
            return
        credentials = self._decode(msg, ResyncCredentials)
        if credentials is None:
            return
        self.store.put_credentials(mac, credentials)

    def _keeps_provision(self, topic: str) -> bool:
        """A phone known as provisioned: its later downloads still move its revision and time."""
        if not self.store.provisions:
            return False
        info = self.ctx.topics.parse(topic)
        old = self.store.provisions.get(info.mac) if info is not None and info.mac else None
        return old is not None and old.provisioned

    # --- output ---
    def _endpoint_for(self, interface: str) -> NotifyEndpoint:
        endpoint = self.endpoints.get(interface)
        if endpoint is not None:
            return endpoint
        if interface and self.settings.sip_interface == ("all",):
            # An address that came up after we started; the listener already hears on it.
            try:
                if interface in netif.resolve(("all",)):
                    return self._open(interface)
            except Exception:
                log.failure("could not open a NOTIFY socket on {address}", address=interface)
        self.counters_["notify_interface_fallback"] += 1
        default = next(iter(self.endpoints.values()))  # the first address PNP_SIP_INTERFACE names
        if interface:
            log.warn("the SUBSCRIBE arrived on {address}, which PNP_SIP_INTERFACE does not name: "
                     "sending from {default}", address=interface, default=default.local[0])
        return default

    def _execute(self, plan: decide.Plan | decide.Held) -> None:
        if isinstance(plan, decide.Held):
            self._held(plan)
            return
        if not self.shard.owns(plan.mac):
            # Another instance's phone: it decides the same from the same retained state, and
            # its own sent log (not ours) keeps its restarts from sending twice.
            self.counters_["notify_other_shard"] += 1
            return
        device = self.store.devices[plan.mac]
        d = device.discovered
        endpoint = self._endpoint_for(d.interface)
        local = build.Local(*endpoint.local)
        in_dialog = False
        # the builder's branch and CSeq are the transaction's key: nothing reads them back
        branch = new_branch()
        cseq = 1
        try:
            target = build.target(d)
            if plan.kind == decide.UA_PROFILE:
                published = self.store.published.get(plan.mac)
                mode = self.settings.notify_dialog.mode_for(
                    d.vendor or (published.vendor if published else ""))
                in_dialog = mode == IN_DIALOG
                cseq = self.store.next_cseq(plan.mac) if in_dialog else 1
                request = build.ua_profile(d, plan.url, local, mode, cseq, branch, target.uri)
            else:
                request = build.check_sync(d, local, self.settings.resync_reboot, branch, target.uri)
        except build.BuildError as exc:
            self.counters_["notify_unbuildable"] += 1
            self._report()  # what is held goes first: a held clear must not erase this error
            self.ctx.publish_error(plan.mac, "notify", f"cannot build the NOTIFY: {exc}")
            return
        now = self.wall()
        if not self.store.mark_sent(plan.key, now):
            return
        attempt = Attempt(plan, request, target.address, endpoint, in_dialog, Key.of(branch, cseq, "NOTIFY"))
        # The order of a NOTIFY's work, and why. Before the datagram only what decides it and
        # what makes it: the build, and the sent log's check and record (queued, in memory: a
        # NOTIFY that is not in the log is never sent). The datagram next: the phone waits for
        # it. Then the rest of this turn's bookkeeping (the epoch's address, in memory before
        # any other message is read; what the statuses say). The sent record (queued by
        # mark_sent above) commits with the others of the next COMMIT_AFTER
        # (notifier/main.py), so a crash before that sends it once more after the restart,
        # never loses it. Its ``sent`` status and log line wait (_later), with its outcome's
        # and other phones' statuses, so that no NOTIFY waits for a status publish and they
        # leave in one write; in order, so the ``sent`` goes first.
        self._send(attempt)
        if plan.epoch is not None:
            self.store.address_epoch(plan.mac, plan.epoch, d.ip, now)
        self.counters_["notify_sent"] += 1
        call_id = attempt.call_id = request.call_id or ""
        attempt.topic = self.ctx.topics.device(plan.mac, "notify")
        attempt.url = url_without_secret(plan.url)
        address = target.address
        at = now_iso()

        def report() -> None:
            self._status(attempt, NotifyStatus(
                status="sent", code=None, attempts=1, url=attempt.url,
                revision=plan.revision, call_id=call_id, at=at, kind=plan.kind))
            self._log_sent(lambda: log.info("NOTIFY {kind} rev {revision} to {mac} at {host}:{port}",
                                            kind=plan.kind, revision=plan.revision, mac=plan.mac,
                                            host=address[0], port=address[1]))

        self._later(report)

    def _later(self, work: Callable[[], None]) -> None:
        """Hold a status (``work`` publishes it) to publish it with the others, in order."""
        if not self._reports:
            self._held_since = self.clock.seconds()
            self._reports_call = self.clock.callLater(STATUS_WAIT, self._report)
        self._reports.append(work)

    def report_held(self) -> None:
        """Publish the held statuses now: before the store commits, so that no NOTIFY is on disk
        as sent while its statuses are still held (a kill -9 between would lose them for good:
        the restart does not send it again). Run by every commit of the store, retries included
        (services.store.Writes.before_commit, wired in notifier/main.py)."""
        self._report()

    def _report(self) -> None:
        """Publish the statuses :meth:`_later` holds, in order."""
        if self._reports_call is not None and self._reports_call.active():
            self._reports_call.cancel()
        self._reports_call = None
        reports, self._reports = self._reports, []
        # in one write at the end (Bus.batch): from a timer or a phone's answer, not a read of
        # the broker, the statuses would otherwise wait for the reactor to report the socket
        # writable
        try:
            with self.ctx.bus.batch():
                for work in reports:
                    try:
                        work()
                    except Exception:
                        # one status that fails must not cost the others of the batch theirs
                        log.failure("publishing a NOTIFY status failed")
        finally:
            # The keeper learns each topic's last status once: a phone's ``sent`` and its
            # outcome published together leave only the outcome retained, and only it needs a
            # fingerprint.
            kept, self._kept = self._kept, {}
            for topic, data in kept.items():
                self.keeper.put(topic, data)

    def _held(self, held: decide.Held) -> None:
        if not self.shard.owns(held.mac):
            self.counters_["notify_other_shard"] += 1
            return
        # No error of ours: the fileserver sees the same discovery and raises the conflict.
        self.counters_["held_second_address"] += 1
        self._log_held(lambda: log.warn(
            "no NOTIFY to {mac} at {second}: the URL of its enrolment epoch {epoch} went to {first}",
            mac=held.mac, second=held.second, epoch=held.epoch, first=held.first))

    def _send(self, attempt: Attempt) -> None:
        def finished(result: Result, answer: Answer | None) -> None:
            self._finished(attempt, result, answer)

        attempt.endpoint.send(attempt.request, attempt.address, finished,
                              self._timers_for(attempt.plan.mac, attempt.address[0]), attempt.key)

    def _timers_for(self, mac: str, host: str) -> Timers:
        """Timer F in full for an address that answered us before, or a phone we provisioned
        at the address it downloaded from; a short one otherwise (``notify_unproven``). A
        provisioned MAC alone is not enough: it is what a spoofed SUBSCRIBE would name."""
        if host in self.answered or self.provisioned_at.get(mac) == host:
            return self.timers
        self.counters_["notify_unproven"] += 1
        return self.unproven_timers

    def _answered_from(self, host: str) -> None:
        answered = self.answered
        answered.pop(host, None)
        answered[host] = None
        if len(answered) > MAX_ANSWERED:
            answered.popitem(last=False)

    def _finished(self, attempt: Attempt, result: Result, answer: Answer | None) -> None:
        if self._stopped:
            return
        plan = attempt.plan
        if attempt.started_at is None:
            attempt.started_at = result.started_at
        attempt.attempts += result.attempts
        if answer is not None and answer.source[0] == attempt.address[0]:
            self._answered_from(answer.source[0])
        why = ""
        if result.status in (401, 407) and answer is not None:
            self.counters_["notify_challenged"] += 1
            again, why = self._authenticate(attempt, answer)
            if again is not None:
                attempt.request = again
                attempt.key = None  # the retry's own branch and CSeq, read from it
                attempt.authenticated += 1
                self.counters_["notify_authenticated"] += 1
                self._send(attempt)
                return
        status = result.outcome.value
        self.counters_[f"notify_{status}"] += 1
        final = NotifyStatus(
            status=status, code=result.status, attempts=attempt.attempts, url=attempt.url,
            revision=plan.revision, call_id=attempt.call_id, at=now_iso(), reason=result.reason,
            rtt_ms=(round((result.ended_at - attempt.started_at) * 1000, 3)
                    if result.outcome is not Outcome.TIMEOUT else None),
            kind=plan.kind, challenged=attempt.authenticated > 0)

        def report() -> None:
            self._status(attempt, final)
            # the device's error after the status that explains it
            if result.outcome is Outcome.REJECTED:
                message = f"the phone refused the {plan.kind} NOTIFY: {result.status} {result.reason}".rstrip()
                self.ctx.publish_error(plan.mac, "notify", f"{message} ({why})" if why else message)
                self._errored.add(plan.mac)
            elif result.outcome is Outcome.ACCEPTED and plan.mac in self._errored:
                self._errored.discard(plan.mac)
                self.ctx.clear_error(plan.mac)

        # A status that raises or clears the device's error goes out at once, with what is held
        # before it: ``error`` is one retained topic that every service writes, and a clear held
        # for up to STATUS_WAIT would erase an error another service (the fileserver's conflict)
        # raised meanwhile. Those are rare; holding saves nothing there.
        errors = result.outcome is Outcome.REJECTED or (
            result.outcome is Outcome.ACCEPTED and plan.mac in self._errored)
        self._later(report)
        if errors or self.clock.seconds() - self._held_since >= STATUS_AFTER:
            self._report()
        if result.outcome is not Outcome.ACCEPTED:
            log.warn("NOTIFY {kind} to {mac}: {status} {code} {reason} after {attempts} attempts{why}",
                     kind=plan.kind, mac=plan.mac, status=status, code=result.status,
                     reason=result.reason, attempts=attempt.attempts, why=f"; {why}" if why else "")

    def _authenticate(self, attempt: Attempt, answer: Answer) -> tuple[Request | None, str]:
        """The NOTIFY again with credentials for the phone's challenge, or None and why not."""
        mac = attempt.plan.mac
        response = answer.response
        if answer.source[0] != attempt.address[0]:
            # Anyone who saw the NOTIFY can answer it; our Digest answer is an offline guessing
            # target for the phone's password, so only the address we sent to gets one.
            self.counters_["notify_challenge_elsewhere"] += 1
            return None, (f"the challenge came from {answer.source[0]}, not from the phone's "
                          f"{attempt.address[0]}: not answered")
        try:
            challenge = choose(challenges(response))
        except DigestError as exc:
            return None, f"cannot answer its challenge: {exc}"
        if attempt.authenticated and not (challenge.stale and attempt.authenticated < MAX_AUTHENTICATED):
            self.counters_["notify_credentials_refused"] += 1
            return None, "it refused account 1's credentials; does the phone have another password?"
        provision = self.store.provisions.get(mac)
        credentials = self.store.credentials_for(mac, provision.revision if provision else None)
        if credentials is None:
            self.counters_["notify_no_credentials"] += 1
            return None, ("it asks for credentials and none are known: the generator publishes "
                          f"account 1's on {self.ctx.topics.device(mac, 'resync')} once the phone "
                          "is assigned")
        number, _ = attempt.request.cseq
        device = self.store.devices.get(mac)
        same_dialog = device is not None and device.discovered.call_id == attempt.call_id
        # In the SUBSCRIBE's dialog our CSeq is the dialog's (stored); out of it, the next one.
        cseq = self.store.next_cseq(mac) if attempt.in_dialog and same_dialog else number + 1
        try:
            again = retry_request(attempt.request, response, credentials.username,
                                  credentials.password, cseq, new_branch(), secrets.token_hex(8))
        except DigestError as exc:
            return None, f"cannot answer its challenge: {exc}"
        return again, ""

    def _status(self, attempt: Attempt, status: NotifyStatus) -> None:
        if not self._stopped:
            # to_json()'s deep copy was a tenth of a NOTIFY's CPU time
            data = encode_flat(status)
            topic = attempt.topic
            self.ctx.bus.publish(topic, data, retain=True)
            self._kept[topic] = data  # for the keeper, at the end of the _report that runs this
