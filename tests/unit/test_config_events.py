"""The ``events`` section: off by default, checked at load time like a tool's webhook, its secret never shown."""

from __future__ import annotations

import pytest

from sipagent.bridge.settings import CALL_EVENT_TYPES
from sipagent.config import load_config_text
from sipagent.errors import ConfigError

BASE = "realtime: {provider: local}\n"
SECRET = "s3cr3t-value-of-32-characters-xx"
HOOK = f"events:\n  webhook:\n    url: https://crm.example.com/hooks/sipagent\n    secret: {SECRET}\n"


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "agent.yaml", {})
    return str(info.value)


def test_off_by_default() -> None:
    config = load_config_text(BASE, "agent.yaml", {})
    assert config.events.webhook is None
    assert "events:    off" in config.summary()


def test_defaults_and_every_key() -> None:
    hook = load_config_text(BASE + HOOK, "agent.yaml", {}).events.webhook
    assert hook is not None
    assert hook.url == "https://crm.example.com/hooks/sipagent" and hook.secret == SECRET
    assert hook.events == list(CALL_EVENT_TYPES)
    assert (hook.timeout_s, hook.retries, hook.backoff_s, hook.retry_window_s, hook.queue_size,
            hook.shutdown_flush_s, hook.headers) == (5.0, 5, 1.0, 300.0, 1000, 3.0, {})
    text = BASE + HOOK + ("    events: [call.ended, call.ended]\n"
                          "    headers: {Authorization: 'Bearer t', X-Tenant: 7}\n"
                          "    timeout_s: 2\n    retries: 0\n    backoff_s: 0.5\n    retry_window_s: 60\n"
                          "    queue_size: 10\n    shutdown_flush_s: 0\n")
    hook = load_config_text(text, "agent.yaml", {}).events.webhook
    assert hook is not None
    assert hook.events == ["call.ended"] and hook.headers == {"Authorization": "Bearer t", "X-Tenant": "7"}
    assert (hook.timeout_s, hook.retries, hook.backoff_s, hook.retry_window_s, hook.queue_size,
            hook.shutdown_flush_s) == (2.0, 0, 0.5, 60.0, 10, 0.0)


def test_the_secret_comes_from_the_environment_and_never_shows() -> None:
    text = BASE + "events:\n  webhook:\n    url: http://10.0.0.5:8080/events\n    secret: ${EVENTS_SECRET}\n"
    config = load_config_text(text, "agent.yaml", {"EVENTS_SECRET": SECRET})
    assert config.events.webhook is not None and config.events.webhook.secret == SECRET
    summary = config.summary()
    assert SECRET not in summary and "http://10.0.0.5:8080" in summary and "/events" not in summary
    message = error_of(BASE + "events:\n  webhook:\n    url: http://h/\n    secret: [hunter2-hunter2-hunter2]\n")
    assert "hunter2" not in message
    assert message == "agent.yaml:5: events.webhook.secret: expected a single value, got a list"
    message = error_of(BASE + "events:\n  webhook:\n    url: http://h/\n    secret: short-one\n")
    assert "short-one" not in message
    assert message == "agent.yaml:5: events.webhook.secret: expected at least 16 characters (e.g. openssl rand -hex 32)"


def test_url_is_required() -> None:
    assert error_of(BASE + "events:\n  webhook:\n    secret: " + SECRET + "\n") == (
        "agent.yaml:4: events.webhook.url: required key is missing")


@pytest.mark.parametrize(("lines", "expected"), [
    ("    url: ftp://crm.example.com/x\n", "agent.yaml:5: events.webhook.url: the URL is not an http:// or https:// "
                                          "URL with a host"),
    ("    url: http:///nohost\n", "agent.yaml:5: events.webhook.url: the URL is not an http:// or https:// URL "
                                  "with a host"),
    ("    url: http://user:pw@h/\n", "agent.yaml:5: events.webhook.url: credentials in the URL are not supported "
                                     "(use headers)"),
    ("    url: http://h/\n    headers: {X-Sipagent-Signature: forged}\n",
     "agent.yaml:6: events.webhook.headers: header X-Sipagent-Signature is set by sipagent, not by the configuration"),
    ("    url: http://h/\n    headers: {Host: other}\n",
     "agent.yaml:6: events.webhook.headers: header Host is set by sipagent, not by the configuration"),
    ("    url: http://h/\n    events: [call.answered]\n",
     'agent.yaml:6: events.webhook.events[0]: expected one of call.started, call.transferred, call.ended, '
     'got "call.answered"'),
    ("    url: http://h/\n    events: []\n",
     "agent.yaml:6: events.webhook.events: expected at least one of call.started, call.transferred, call.ended "
     "(to send none, remove events.webhook)"),
    ("    url: http://h/\n    timeout_s: 0\n", "agent.yaml:6: events.webhook.timeout_s: expected 0.1 to 60 seconds, "
                                               "got 0"),
    ("    url: http://h/\n    retries: 50\n", "agent.yaml:6: events.webhook.retries: expected 0 to 20, got 50"),
    ("    url: http://h/\n    queue_size: 0\n", "agent.yaml:6: events.webhook.queue_size: expected 1 to 100000, got 0"),
    ("    url: http://h/\n    retry_window_s: -1\n",
     "agent.yaml:6: events.webhook.retry_window_s: expected 1 to 86400 seconds, got -1"),
    ("    url: http://h/\n    shutdown_flush_s: 600\n",
     "agent.yaml:6: events.webhook.shutdown_flush_s: expected 0 to 60 seconds, got 600"),
    ("    url: http://h/\n    colour: blue\n", "agent.yaml:6: events.webhook.colour: unknown key (expected one of: "
                                               "backoff_s, events, headers, queue_size, retries, retry_window_s, "
                                               "secret, shutdown_flush_s, timeout_s, url)"),
])
def test_errors_name_file_line_key_and_expectation(lines: str, expected: str) -> None:
    assert error_of(BASE + "events:\n  webhook:\n    secret: " + SECRET + "\n" + lines) == expected


def test_a_missing_secret_is_named() -> None:
    assert error_of(BASE + "events:\n  webhook:\n    url: http://h/\n") == (
        "agent.yaml:4: events.webhook.secret: required: the key events are signed with, shared with the receiver "
        "(e.g. secret: ${SIPAGENT_EVENTS_SECRET})")
