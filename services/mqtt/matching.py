"""MQTT topic-filter matching, as paho's ``topic_matches_sub`` decides it.

paho's function builds a matcher tree on every call (a few percent of a busy service's CPU);
a filter here is split once, when it is subscribed, and a received topic once, for all the
filters it is checked against (``matches_levels``)."""

from __future__ import annotations


class TopicFilter:
    """One topic filter (``+`` and ``#`` wildcards), split into levels once."""

    __slots__ = ("filter", "levels", "_size", "_fixed", "_wild_first")

    def __init__(self, topic_filter: str) -> None:
        self.filter = topic_filter
        self.levels = tuple(topic_filter.split("/"))
        multi = self.levels[-1] == "#"
        # a topic matches only with exactly this many levels (at least this many before a '#')
        self._size = len(self.levels) - 1 if multi else len(self.levels)
        # the levels that must be equal, by position: a '+' takes any, a final '#' the rest
        self._fixed = tuple((i, level) for i, level in enumerate(self.levels[:self._size]) if level != "+")
        self._wild_first = self.levels[0] in ("+", "#")
        if multi:
            self._size = -self._size - 1  # negative: "at least" (-1 - n means n or more)

    def matches(self, topic: str) -> bool:
        return self.matches_levels(topic.split("/"), topic[:1] == "$")

    def matches_levels(self, parts: list[str], system: bool) -> bool:
        """``matches`` for a topic already split at '/'; ``system``: it starts with '$'."""
        if system and self._wild_first:
            return False  # wildcards never match $SYS and the like (MQTT 4.7.2)
        size = self._size
        if size >= 0:
            if len(parts) != size:
                return False
        elif len(parts) < -size - 1:
            return False
        for i, level in self._fixed:
            if parts[i] != level:
                return False
        return True
