"""Process-wide logging: text or JSON lines, the Call-ID on every call line, secrets redacted, SIP tracing.

Call-ID tagging: the bridge sets the context variable at the top of the coroutine a call runs in::

    async def run_call(call):
        set_call_id(call.call_id)   # every log line from this task, and tasks it creates, carries it
        ...

``asyncio`` copies the current context into each new task, so the value stays inside that call's task
tree and never leaks into other calls. Code outside the call's tasks (the UA's dispatch, for example)
can use ``call_logger(log, call_id)`` or pass ``extra={"call_id": ...}``.

Redaction happens on the final formatted line (tracebacks included): configured secrets, digest
``response=`` values and ``Bearer`` tokens become ``***``.

SIP wire tracing: ``trace_logger`` (``sipagent.sip.trace``) and the transport's ``sipagent.sip.wire``
are off until SIGUSR1 (``install_trace_toggle``) or ``set_trace(True)`` turns them on; emit traces with
``if trace_enabled(): trace_logger.debug(...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import signal
import sys
import traceback
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, Literal, TextIO

log = logging.getLogger(__name__)

call_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("sipagent_call_id", default="")

MIN_SECRET_LEN = 4   # shorter "secrets" would mangle ordinary text (ports, extensions) for no protection
MASK = "***"
TRACE_LOGGER = "sipagent.sip.trace"
# The SIP transport already traces to this name; the toggle drives both.
# Per-message loggers: SIP, and the Realtime events and WebSocket frames (one per 20 ms of audio), which
# would otherwise bury everything else at logging.level debug. SIGUSR1 switches them all.
TRACE_LOGGERS = (TRACE_LOGGER, "sipagent.sip.wire", "sipagent.realtime.client.wire", "websockets")
trace_logger = logging.getLogger(TRACE_LOGGER)

_HANDLER_MARK = "_sipagent_handler"
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and goes into JSON.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime",
                                                                                      "call_id"}

_DIGEST_RESPONSE = re.compile(
    r"((?:authorization|digest)\b[^\r\n]*?\bresponse\s*=\s*)(\"[^\"\r\n]*\"|[^\s,\"]+)", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_API_KEY_HEADER = re.compile(r"\b(api-key\s*[:=]\s*)[^\s,;\"']+", re.IGNORECASE)
# SDES master keys in an SDP body (a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:KEY|lifetime|MKI), as a SIP
# trace shows it: the key goes, the tag, suite, lifetime and MKI stay (they are what one debugs).
_SDES_KEY = re.compile(r"(\binline:)[A-Za-z0-9+/]+=*", re.IGNORECASE)  # "INLINE:" too: ABNF literals


# -- call id --------------------------------------------------------------------------------------------
def set_call_id(call_id: str) -> contextvars.Token[str]:
    """Tag the current task (and tasks it creates from now on) with ``call_id``."""
    return call_id_var.set(call_id)


@contextlib.contextmanager
def call_context(call_id: str) -> Iterator[None]:
    token = call_id_var.set(call_id)
    try:
        yield
    finally:
        call_id_var.reset(token)


class CallLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger whose lines carry a fixed Call-ID, for code that runs outside the call's task."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("call_id", (self.extra or {}).get("call_id", ""))
        kwargs["extra"] = extra
        return msg, kwargs


def call_logger(logger: logging.Logger, call_id: str) -> CallLogger:
    return CallLogger(logger, {"call_id": call_id})


class CallIdFilter(logging.Filter):
    """Gives every record a ``call_id``: the one passed in ``extra``, else the task's context variable."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "call_id", ""):
            record.call_id = call_id_var.get()
        return True


# -- redaction ------------------------------------------------------------------------------------------
class Redactor:
    """Replaces secrets and credentials in text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: re.Pattern[str] | None = None
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) < MIN_SECRET_LEN:
                continue
            # As written, inside a repr() (tracebacks, dicts), and either of those inside a JSON string.
            for form in (secret, repr(secret)[1:-1]):
                forms.add(form)
                forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
        # Longest first, so a secret that contains another one is masked whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact_secrets(self, text: str) -> str:
        """Only the configured secrets (safe on an encoded JSON line, unlike the header patterns)."""
        return self._secrets.sub(MASK, text) if self._secrets is not None else text

    def redact(self, text: str) -> str:
        text = self.redact_secrets(text)
        text = _DIGEST_RESPONSE.sub(lambda m: f'{m.group(1)}"{MASK}"', text)
        text = _BEARER.sub(rf"\g<1>{MASK}", text)
        text = _API_KEY_HEADER.sub(rf"\g<1>{MASK}", text)
        return _SDES_KEY.sub(rf"\g<1>{MASK}", text)


# -- formatters -----------------------------------------------------------------------------------------
def _timestamp(record: logging.LogRecord) -> dt.datetime:
    return dt.datetime.fromtimestamp(record.created, tz=dt.UTC)


class TextFormatter(logging.Formatter):
    """``2025-01-31 12:00:00.123 INFO sipagent.bridge.call [call-id] message`` (local time)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        when = _timestamp(record).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        call_id = getattr(record, "call_id", "")
        tag = f" [{call_id}]" if call_id else ""
        line = f"{when} {record.levelname} {record.name}{tag} {record.getMessage()}"
        extra = _exception_text(record)
        if extra:
            line = f"{line}\n{extra}"
        return self.redactor.redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, call_id, msg, extras, exc."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", "") or None,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry.setdefault(key, value)
        exc = _exception_text(record)
        if exc:
            entry["exc"] = exc
        # Header patterns run on the plain strings (JSON escaping would hide their quotes); the secrets
        # pass runs again on the encoded line for anything nested that only str() revealed.
        line = json.dumps(self._redacted(entry), default=str, ensure_ascii=False)
        return self.redactor.redact_secrets(line)

    def _redacted(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, dict):
            return {str(k): self._redacted(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._redacted(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self.redactor.redact(str(value))


def _exception_text(record: logging.LogRecord) -> str:
    parts: list[str] = []
    if record.exc_info and record.exc_info[0] is not None:
        parts.append("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    elif record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


# -- set-up ---------------------------------------------------------------------------------------------
def configure_logging(level: str = "info", fmt: Literal["text", "json"] | str = "text",
                      secrets: Iterable[str] = (), *, stream: TextIO | None = None) -> logging.Handler:
    """Install the one sipagent handler on the root logger (replacing a previous one) and return it.

    ``secrets``: the SIP password, the API key … (empty and very short strings are ignored).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"logging format must be text or json, not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown logging level {level!r}")
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(redactor) if fmt == "json" else TextFormatter(redactor))
    handler.addFilter(CallIdFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    set_trace(trace_enabled())  # keep the wire loggers explicitly off (or on) whatever the root level
    return handler


# -- SIP wire tracing -----------------------------------------------------------------------------------
def trace_enabled() -> bool:
    return trace_logger.level == logging.DEBUG


def set_trace(enabled: bool) -> None:
    # "Off" is INFO, not NOTSET: with logging.level debug, wire traces would otherwise flood the log.
    for name in TRACE_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if enabled else logging.INFO)


def toggle_trace() -> bool:
    enabled = not trace_enabled()
    set_trace(enabled)
    log.warning("SIP message tracing %s", "on" if enabled else "off")
    return enabled


def install_trace_toggle(loop: asyncio.AbstractEventLoop) -> bool:
    """SIGUSR1 flips SIP tracing; False where the platform has no SIGUSR1 (Windows)."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None:
        return False
    loop.add_signal_handler(sig, toggle_trace)
    return True


def remove_trace_toggle(loop: asyncio.AbstractEventLoop) -> None:
    sig = getattr(signal, "SIGUSR1", None)
    if sig is not None:
        loop.remove_signal_handler(sig)
