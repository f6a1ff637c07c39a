"""``PNP_SIP_INTERFACE=all`` and interface names, inside a network namespace of our own.

NETWORK-SAFETY.md rule 5: the listener never joins the group on a real interface outside a
namespace. So the outer test re-runs this file under ``unshare -n``, where the only interfaces
are ``lo`` and two veth pairs it creates (pnp0: 10.99.0.1, pnp1: 10.98.0.1), and nothing can
leave the host. Phones there multicast on one interface each.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from listener import main as listener_main
from listener.multicast import GROUP
from services.runner import Runtime
from services.sip.message import parse
from tests.support import BrokerCase, eventually, make_settings, rerun_in_network_namespace
from tests.test_listener import Phone, free_udp_port

INSIDE = os.environ.get("PNP_TEST_NETNS") == "1"
NETWORK = [
    "ip link set lo up", "ip link set lo multicast on", "ip route add 224.0.0.0/4 dev lo",
    "ip link add pnp0 type veth peer name pnp0p", "ip addr add 10.99.0.1/24 dev pnp0",
    "ip addr add 10.99.0.2/24 dev pnp0", "ip link set pnp0 up multicast on",
    "ip link add pnp1 type veth peer name pnp1p", "ip addr add 10.98.0.1/24 dev pnp1",
    "ip addr add 10.98.0.2/24 dev pnp1", "ip link set pnp1 up multicast on",
]


def test_interfaces_inside_a_namespace():
    if INSIDE:
        pytest.skip("this is the namespace already")
    rerun_in_network_namespace(__file__, "InNamespace", "PNP_TEST_NETNS", timeout=120)


@pytest.mark.skipif(not INSIDE, reason="runs only inside the namespace the outer test makes")
class InNamespace(BrokerCase):
    probe_topics = "pnp/devices/+/discovered"

    timeout = 30

    def setUp(self) -> None:
        # once per namespace (/sys still shows the host's interfaces, so ask ip)
        if subprocess.run(["ip", "link", "show", "pnp0"], capture_output=True).returncode != 0:
            for command in NETWORK:
                subprocess.run(command.split(), check=True)
        super().setUp()
        self.sip_port = free_udp_port()
        self.logged: list[str] = []
        observer = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    @defer.inlineCallbacks
    def start_listener(self, interfaces: str):
        settings = make_settings(self.broker, self.mktemp(), extra=listener_main.SETTINGS,
                                 sip_port=str(self.sip_port), sip_interface=interfaces)
        rt = Runtime("listener", settings, listener_main.start, reactor)
        yield rt.start()
        self.addCleanup(rt.stop)
        return rt

    def phone(self, address: str, mac: str, multicast_if: str) -> Phone:
        p = Phone(address, mac, multicast_if)
        self.addCleanup(p.stop)
        p.send(p.subscribe_bytes("z9hG4bKns"), self.sip_port)
        return p

    @defer.inlineCallbacks
    def test_all_joins_every_interface_but_loopback_and_names_where_each_phone_is(self):
        rt = yield self.start_listener("all")
        for address in ("10.98.0.1", "10.99.0.1"):
            self.assertTrue(any(f"joined {GROUP} on {address}" in line for line in self.logged))
        self.assertFalse(any(f"joined {GROUP} on 127.0.0.1" in line for line in self.logged))
        on0 = self.phone("10.99.0.2", "000b82000001", "10.99.0.1")
        on1 = self.phone("10.98.0.2", "000b82000002", "10.98.0.1")
        on_lo = self.phone("127.0.0.2", "000b82000003", "127.0.0.1")
        yield eventually(lambda: on0.replies and on1.replies)
        self.assertEqual(on0.replies[0][1], ("10.99.0.1", self.sip_port))
        self.assertEqual(parse(on0.replies[0][0]).status, 200)
        for phone, interface in ((on0, "10.99.0.1"), (on1, "10.98.0.1")):
            topic = rt.topics.device(phone.mac, "discovered")
            yield eventually(lambda: self.probe.on(topic))
            self.assertEqual(self.probe.last(topic)["interface"], interface)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(on_lo.replies, [], "loopback is not part of 'all'")

    @defer.inlineCallbacks
    def test_an_interface_name_joins_that_interface_only(self):
        rt = yield self.start_listener("pnp1")
        self.assertTrue(any(f"joined {GROUP} on 10.98.0.1" in line for line in self.logged))
        on0 = self.phone("10.99.0.2", "000b82000011", "10.99.0.1")
        on1 = self.phone("10.98.0.2", "000b82000012", "10.98.0.1")
        yield eventually(lambda: on1.replies)
        topic = rt.topics.device(on1.mac, "discovered")
        yield eventually(lambda: self.probe.on(topic))
        self.assertEqual(self.probe.last(topic)["interface"], "10.98.0.1")
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(on0.replies, [])
