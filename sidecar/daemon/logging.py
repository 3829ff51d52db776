"""structlog set up for a daemon, on stderr: readable lines for a person at a terminal, one
JSON object per line for everything else (a file, journald, a log shipper).

``[server] log_format`` (or ``sidecar serve --log-format``) chooses: ``auto`` (the default)
looks at whether stderr is a terminal, ``json`` and ``console`` force one. Log values can
carry text from clients or the LLM server, so on the console every character that could
steer the terminal is escaped, as ``sidecar tail`` does; JSON escapes them by itself.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.types import ExcInfo, Processor

from sidecar.terminal import printable

LogFormat = Literal["auto", "json", "console"]


def use_console(fmt: LogFormat, stream: TextIO) -> bool:
    """Whether ``fmt`` means readable lines on ``stream`` (``auto``: when it is a terminal)."""
    if fmt == "auto":
        try:
            return stream.isatty()
        except ValueError:  # closed
            return False
    return fmt == "console"


def _escape_controls(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Escape terminal controls in string values (containers are shown by ``repr``, which
    escapes them already)."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = printable(value)
    return event


def _escaped_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    """A plain traceback, each line escaped: an exception's message may quote a client."""
    raw = io.StringIO()
    structlog.dev.plain_traceback(raw, exc_info)
    sio.write("\n".join(printable(line) for line in raw.getvalue().split("\n")))


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Log at ``level`` and above to ``stream`` (stderr), as ``fmt`` says."""
    out = stream or sys.stderr
    processors: list[Processor] = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level]
    if use_console(fmt, out):
        colours = "NO_COLOR" not in os.environ and use_console("auto", out)
        processors += [
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            _escape_controls,
            structlog.dev.ConsoleRenderer(colors=colours, exception_formatter=_escaped_traceback),
        ]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
