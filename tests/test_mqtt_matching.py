"""MQTT topic-filter matching (services/mqtt/matching.py)."""

from __future__ import annotations

from services.mqtt import TopicFilter


def test_subscription_matching_is_paho_s():
    """Our topic matcher agrees with paho's on every filter and topic shape."""
    import itertools

    import paho.mqtt.client as mqtt

    filters = ["#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/+/c", "a/b/#", "+/#",
               "pnp/devices/+/discovered", "$SYS/#", "$SYS/+", "/a", "a/", "+/+/+", "//", "/#",
               "a/+/#", "+/+/#", "a/b/+", "pnp/devices/+/#", "+/b/#"]
    topics = ["a", "a/b", "a/c", "a/b/c", "b/b", "a/b/c/d", "$SYS/x", "$SYS", "/a", "a/", "",
              "/", "//", "pnp/devices/000b82f55284/discovered", "pnp/devices/x/published"]
    for f, topic in itertools.product(filters, topics):
        assert TopicFilter(f).matches(topic) == mqtt.topic_matches_sub(f, topic), (f, topic)
