"""services/topics.py: every topic of the contract (docs/MQTT.md) built and parsed in one place."""

from __future__ import annotations

import pytest

from services.topics import DEVICE_KINDS, Topics, TopicInfo, is_device_topic, is_mac

MAC = "000b82f55284"


@pytest.mark.parametrize("text", ["000b82f55284", "ffffffffffff", "0123456789ab"])
def test_a_mac_is_twelve_lowercase_hex_digits(text):
    assert is_mac(text)


@pytest.mark.parametrize("text", ["000B82F55284", "000b82f5528", "000b82f552840", "00:0b:82:f5:52:84",
                                  "000b82f5528g", "", "000b82f55284\n"])
def test_anything_else_is_not_a_mac(text):
    assert not is_mac(text)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_every_device_topic_round_trips(kind):
    topics = Topics()
    topic = topics.device(MAC, kind)
    assert topic == f"pnp/devices/{MAC}/{kind}"
    info = topics.parse(topic)
    assert info == TopicInfo("devices", kind=kind, mac=MAC)
    assert info.mac_ok


def test_the_contract_topics_are_spelled_as_documented():
    topics = Topics()
    assert topics.devices() == "pnp/devices/+/+"
    assert topics.devices("config") == "pnp/devices/+/config"
    assert topics.profile("office") == "pnp/profiles/office"
    assert topics.profiles() == "pnp/profiles/+"
    assert topics.service("listener", "a") == "pnp/services/listener/a"
    assert topics.services() == "pnp/services/+/+"
    assert topics.everything() == "pnp/#"


def test_profile_and_service_topics_round_trip():
    topics = Topics()
    assert topics.parse(topics.profile("office")) == TopicInfo("profiles", name="office")
    assert topics.parse(topics.service("notifier", "n1")) == TopicInfo(
        "services", service="notifier", instance="n1")


@pytest.mark.parametrize("prefix", ["site1", "acme/site1", "a/b/c"])
def test_a_prefix_with_or_without_slashes_prefixes_every_topic(prefix):
    topics = Topics(prefix)
    for topic in (topics.device(MAC, "config"), topics.devices("config"), topics.profile("p"),
                  topics.profiles(), topics.service("generator", "g"), topics.services(),
                  topics.everything()):
        assert topic.startswith(prefix + "/")
    assert topics.parse(f"{prefix}/devices/{MAC}/config") == TopicInfo("devices", kind="config", mac=MAC)
    assert topics.parse(f"{prefix}/profiles/p") == TopicInfo("profiles", name="p")


def test_topics_under_another_prefix_are_not_ours():
    assert Topics("site1").parse(f"site2/devices/{MAC}/config") is None
    assert Topics("site1").parse(f"pnp/devices/{MAC}/config") is None
    # a prefix is a whole number of levels: "site" does not own "site1/..."
    assert Topics("site").parse(f"site1/devices/{MAC}/config") is None
    assert Topics("acme").parse(f"acme/site1/devices/{MAC}/config") is None


@pytest.mark.parametrize("topic", [
    "pnp", "pnp/", "pnp/devices", f"pnp/devices/{MAC}", f"pnp/devices/{MAC}/nonsense",
    f"pnp/devices/{MAC}/config/extra", "pnp/devices//config", "pnp/profiles", "pnp/profiles/",
    "pnp/profiles/a/b", "pnp/services/listener", "pnp/services//a", "pnp/services/listener/",
    "pnp/other/thing", "",
])
def test_malformed_topics_parse_to_none(topic):
    assert Topics().parse(topic) is None


def test_a_device_segment_that_is_not_a_mac_parses_but_is_flagged():
    info = Topics().parse("pnp/devices/NOT-A-MAC/config")
    assert info is not None and info.mac == "NOT-A-MAC"
    assert not info.mac_ok


def test_only_a_device_topic_with_a_proper_mac_is_a_device_topic():
    topics = Topics()
    assert is_device_topic(topics.parse(topics.device(MAC, "config")))
    for topic in ("pnp/devices/NOT-A-MAC/config", "pnp/profiles/office", "pnp/services/listener/a",
                  "other/devices/000b82f55284/config"):
        assert not is_device_topic(topics.parse(topic))


@pytest.mark.parametrize("segment", ["", "a/b", "+", "#", "a+b", "x#", "nul\0"])
def test_building_refuses_a_segment_that_would_change_the_topic(segment):
    topics = Topics()
    with pytest.raises(ValueError, match="not a topic segment"):
        topics.device(segment, "config")
    with pytest.raises(ValueError, match="not a topic segment"):
        topics.profile(segment)


def test_building_refuses_an_unknown_device_kind():
    topics = Topics()
    with pytest.raises(ValueError, match="unknown device topic kind"):
        topics.device(MAC, "configs")
    with pytest.raises(ValueError, match="unknown device topic kind"):
        topics.devices("#")
