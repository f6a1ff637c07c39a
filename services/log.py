"""Structured logs: JSON lines when stdout is not a terminal, readable lines when it is."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

from zope.interface import implementer

from services.textsafe import json_safe, printable

_RESERVED = {"log_format", "log_level", "log_namespace", "log_source", "log_time", "log_logger",
             "log_failure", "log_io", "log_text", "log_system", "log_trace", "format", "message",
             "time", "system", "isError", "log_flattened", "failure", "why"}


@implementer(ILogObserver)
class LineObserver:
    """Writes one line per event, as JSON or as text."""

    def __init__(self, stream: IO[str], service: str, as_json: bool) -> None:
        self.stream = stream
        self.service = service
        self.as_json = as_json

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        level_name = getattr(level, "name", str(level))
        when = datetime.fromtimestamp(event.get("log_time", 0), timezone.utc)
        # Events carry network text (a phone's model, a User-Agent): escaped, it cannot forge a
        # line or drive the terminal. A traceback's own line breaks are ours and stay.
        text = printable(formatEvent(event))
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}" if not self.as_json else text
        if self.as_json:
            record: dict[str, Any] = {
                "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": level_name,
                "service": self.service,
                "ns": event.get("log_namespace", ""),
                "msg": text,
            }
            for key, value in event.items():
                if key not in _RESERVED and not key.startswith("log_"):
                    record[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
            if failure is not None:
                record["error"] = failure.getErrorMessage()
                record["traceback"] = failure.getTraceback()
            line = json_safe(json.dumps(record, ensure_ascii=False, default=str))
        else:
            namespace = printable(str(event.get("log_namespace", "")))
            line = f"{when:%H:%M:%S}.{when.microsecond // 1000:03d} {level_name:<5} {namespace}: {text}"
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed stdout must not stop a service


def start_logging(service: str, fmt: str = "auto", stream: IO[str] | None = None,
                  level: LogLevel = LogLevel.info) -> None:
    stream = stream or sys.stdout
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    observer = FilteringLogObserver(
        LineObserver(stream, service, as_json),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False, discardBuffer=True)
