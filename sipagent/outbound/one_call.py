"""``sipagent call``: start the agent, place one call, wait for its end, stop; the outcome as an exit code.

The agent side is injected: anything with ``start``, ``stop`` and ``place_outbound`` (the ``place`` of
sipagent.outbound.calls) is an ``OutboundAgent``; by default it is ``sipagent.agent.Agent``. Ctrl-C (or
SIGTERM) during the call CANCELs it while it rings and hangs it up once answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping
from typing import Protocol

from sipagent.bridge.context import check_call_variables
from sipagent.config import Config
from sipagent.outbound.calls import CallProgress, CallRequest, OutboundCall, OutboundCalls, PlaceResult
from sipagent.outbound.target import dial_uri

# The exit code of ``sipagent call`` for each outcome; 0 is success: a person answered, or a machine did and
# the profile's message was left. 1 and 2 stay the CLI's (configuration or start failure, usage).
EXIT_CODES: dict[str, int] = {"answered": 0, "busy": 10, "no-answer": 11, "rejected": 12, "failed": 13,
                              "cancelled": 14, "machine": 15}


class OutboundAgent(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace_s: float = 0.0) -> None: ...

    async def place_outbound(self, progress: CallProgress) -> PlaceResult: ...


AgentFactory = Callable[[Config], OutboundAgent]


def exit_code(call: OutboundCall) -> int:
    if call.success:
        return 0
    return EXIT_CODES.get(call.outcome or "failed", EXIT_CODES["failed"])


def build_request(config: Config, target: str, profile: str | None, variables: Mapping[str, str]) -> CallRequest:
    """The checked request, by the same rules as the control API; ValueError saying what is wrong."""
    to = dial_uri(target, config.sip.effective_domain, tls=config.sip.transport == "tls")
    name = profile or config.outbound.profile or "default"
    profiles = config.profiles()
    if name not in profiles:
        raise ValueError(f'profile: unknown profile "{name}" (profiles: {", ".join(profiles)})')
    return CallRequest(to, name, check_call_variables(dict(variables)))


def _default_agent(config: Config) -> OutboundAgent:
    from sipagent.agent import Agent

    return Agent(config)


async def call_once(config: Config, request: CallRequest, agent_factory: AgentFactory | None = None) -> OutboundCall:
    """Start the agent, place ``request``, wait for the end, stop the agent; the finished call."""
    agent = (agent_factory or _default_agent)(config)
    await agent.start()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    try:
        calls = OutboundCalls(agent.place_outbound, max_calls=1, calls_per_second=1.0, history=1)
        call = calls.start(request)
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals
                loop.add_signal_handler(sig, calls.cancel, call.id)
                handled.append(sig)
        return await calls.wait(call.id)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await agent.stop()


def place_one_call(config: Config, target: str, profile: str | None, variables: Mapping[str, str],
                   agent_factory: AgentFactory | None = None) -> OutboundCall:
    """``sipagent call``: the finished call (its ``outcome``, ``exit_code(call)`` for the shell).
    ValueError for a bad target, profile or variable; SipagentError when the agent cannot start."""
    from sipagent.agent import run_loop
    from sipagent.observability.logs import configure_logging

    request = build_request(config, target, profile, variables)
    configure_logging(config.logging.level, config.logging.format, secrets=_secrets(config))
    return run_loop(call_once(config, request, agent_factory))


def _secrets(config: Config) -> list[str]:
    hook = config.events.webhook
    return [config.sip.password, config.realtime.api_key, config.control.token, hook.secret if hook else "",
            *(account.password for account in config.sip.accounts)]
