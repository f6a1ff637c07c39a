"""The received-message type every handler gets: topic, raw bytes, retain flag, parsed JSON."""

from __future__ import annotations

from typing import Any, Callable

from services.messages import PayloadError, decode_json

_UNPARSED: Any = object()


class Incoming:
    """A received message. ``data`` is the parsed JSON (None for an empty payload);
    ``error`` says why the payload could not be parsed, when it could not.

    Both are worked out on first access: a handler that can tell from ``raw`` that a message is
    nothing to it (the notifier and half a boot storm's ``fetched``) pays for no JSON parsing."""

    __slots__ = ("topic", "raw", "retain", "_data", "_error")

    def __init__(self, topic: str, raw: bytes, retain: bool, data: Any = _UNPARSED,
                 error: Any = _UNPARSED) -> None:
        self.topic = topic
        self.raw = raw
        self.retain = retain
        if data is _UNPARSED and error is _UNPARSED:
            self._data = self._error = _UNPARSED
        else:  # given: taken as is
            self._data = None if data is _UNPARSED else data
            self._error = None if error is _UNPARSED else error

    def _parse(self) -> None:
        self._data = self._error = None
        if self.raw:
            try:
                self._data = decode_json(self.raw)
            except PayloadError as exc:
                self._error = str(exc)

    @property
    def data(self) -> Any:
        if self._data is _UNPARSED:
            self._parse()
        return self._data

    @data.setter
    def data(self, value: Any) -> None:
        if self._error is _UNPARSED:
            self._error = None
        self._data = value

    @property
    def error(self) -> str | None:
        if self._error is _UNPARSED:
            self._parse()
        error: str | None = self._error
        return error

    @error.setter
    def error(self, value: str | None) -> None:
        if self._data is _UNPARSED:
            self._data = None
        self._error = value

    @property
    def empty(self) -> bool:
        return len(self.raw) == 0

    def __repr__(self) -> str:
        return (f"Incoming(topic={self.topic!r}, raw={self.raw!r}, retain={self.retain!r}, "
                f"data={self.data!r}, error={self.error!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Incoming):
            return NotImplemented
        return ((self.topic, self.raw, self.retain, self.data, self.error)
                == (other.topic, other.raw, other.retain, other.data, other.error))


Handler = Callable[[Incoming], Any]
