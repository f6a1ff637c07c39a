"""MQTT topic-filter matching, as paho's ``topic_matches_sub`` decides it.

paho's function builds a matcher tree on every call (a few percent of a busy service's CPU);
a filter here is split once, when it is subscribed."""

from __future__ import annotations


class TopicFilter:
    """One topic filter (``+`` and ``#`` wildcards), split into levels once."""

    __slots__ = ("filter", "levels")

    def __init__(self, topic_filter: str) -> None:
        self.filter = topic_filter
        self.levels = tuple(topic_filter.split("/"))

    def matches(self, topic: str) -> bool:
        levels = self.levels
        if topic[:1] == "$" and levels[0] in ("+", "#"):
            return False  # wildcards never match $SYS and the like (MQTT 4.7.2)
        parts = topic.split("/")
        for i, level in enumerate(levels):
            if level == "#":
                return True
            if i >= len(parts) or (level != "+" and level != parts[i]):
                return False
        return len(parts) == len(levels)

