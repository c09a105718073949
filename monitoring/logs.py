"""One logging setup for the pipelines and the collector: JSON lines or text.

``configure_logging`` routes both the standard library's ``logging`` records
(Beam, kafka-python, uvicorn) and structlog's through one structlog
``ProcessorFormatter`` on stderr, so every line has the same shape. In JSON
mode a line is one object::

    {"timestamp": "2026-01-01T10:00:00.123Z", "level": "info",
     "logger": "beam_pipelines.frontend", "event": "pipeline finished",
     "pipeline": "frontend", "step": "sink:postgres", "written": 5120}

Key/value pairs given to a structlog logger (``log.info("batch published",
topic=..., events=12)``) become fields; ``bind_context(pipeline=...)`` adds
fields to every later line of the same thread or task (structlog
contextvars). Text mode renders the same fields as ``key=value`` after the
message, coloured when stderr is a terminal.

The format is chosen once, by the caller (a command-line flag) or, when the
caller passes none, by ``IHEARD_LOG_FORMAT`` (``json`` | ``text``); with
neither, JSON unless stderr is a terminal.
"""
from __future__ import annotations

import logging
import sys
import typing

import structlog

from iheard_io import settings as env_settings

__all__ = [
    "LOG_FORMATS",
    "LOG_FORMAT_ENV",
    "configure_logging",
    "resolve_log_format",
    "get_logger",
    "bind_context",
]

LOG_FORMATS = ("json", "text")
LOG_FORMAT_ENV = "IHEARD_LOG_FORMAT"

# Libraries whose INFO lines are per-step chatter (Beam's type-hint and state
# cache messages, kafka-python's connection bookkeeping): WARNING and up only.
_QUIET_LOGGERS = ("apache_beam", "kafka")


def resolve_log_format(log_format: typing.Optional[str] = None, stream=None) -> str:
    """The explicit format, else ``$IHEARD_LOG_FORMAT``, else json unless
    ``stream`` (stderr) is a terminal."""
    chosen = log_format or env_settings.value(None, LOG_FORMAT_ENV) or None
    if chosen is None:
        stream = stream if stream is not None else sys.stderr
        return "text" if getattr(stream, "isatty", lambda: False)() else "json"
    chosen = chosen.strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    return chosen


def _drop_color_message(logger, method_name, event_dict):
    # uvicorn passes a coloured copy of its message as an extra field.
    event_dict.pop("color_message", None)
    return event_dict


def _shared_processors() -> list:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
    ]


def configure_logging(
    log_format: typing.Optional[str] = None,
    level: typing.Union[int, str] = logging.INFO,
    stream=None,
) -> str:
    """Installs the handler on the root logger (replacing earlier handlers) and
    configures structlog to go through it. Returns the format in force."""
    stream = stream if stream is not None else sys.stderr
    fmt = resolve_log_format(log_format, stream)
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        final = [structlog.processors.format_exc_info, renderer]
    else:
        colors = bool(getattr(stream, "isatty", lambda: False)())
        final = [structlog.dev.ConsoleRenderer(colors=colors)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return fmt


def get_logger(name: str):
    """A structlog logger that writes through the standard library's ``name``."""
    return structlog.stdlib.get_logger(name)


def bind_context(**fields) -> None:
    """Adds ``fields`` to every later line of this thread / asyncio task."""
    structlog.contextvars.bind_contextvars(**fields)
