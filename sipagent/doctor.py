"""``sipagent check --connect``: try each outside dependency once and give a verdict per step.

Registers once and unregisters (or, in direct mode, binds the SIP port), reserves the RTP ports, and
opens a Realtime session, sends the session.update built from the config and waits for the server to
acknowledge it. Each step prints ``ok`` or ``FAIL`` with what to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

from sipagent.agent import realtime_endpoint, session_settings, ua_settings
from sipagent.bridge import webhook
from sipagent.bridge.transcript import directory_problem, free_bytes
from sipagent.config import Config, HostPort, parse_host_port
from sipagent.errors import ConfigError, RealtimeError, SipagentError
from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient
from sipagent.rtp.ports import PortAllocator
from sipagent.sip.admission import parse_network
from sipagent.sip.ua import UserAgent

Step = Callable[[Config], Awaitable[str]]


class StepFailed(SipagentError):
    pass


def describe_trust(config: Config) -> tuple[str, list[ConfigError]]:
    """Who may send the agent calls, with each name resolved now (as ``sipagent run`` will at start), and
    an error for each name that does not resolve: the agent refuses calls from it (it fails closed)."""
    sip = config.sip
    problems: list[ConfigError] = []
    sources: list[str] = []

    def resolve(key: str, host: str, consequence: str = "calls from it will be refused") -> str:
        if parse_network(host) is not None:
            return host
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError as exc:
            problems.append(config.key_problem(key, f'"{host}" does not resolve ({exc}): {consequence}'))
            return f"{host} (does not resolve)"
        addresses = ", ".join(dict.fromkeys(str(info[4][0]) for info in infos))
        return f"{host} ({addresses})"

    registrar = sip.registrar_address
    if registrar is not None:
        # Not only trust: the agent registers there, and cannot while the name does not resolve.
        source = resolve("sip.registrar", registrar.host, "the agent cannot register there (it keeps trying), and "
                                                          "calls from it will be refused")
        sources.append(source)
    if sip.outbound_proxy:
        proxy = parse_host_port(sip.outbound_proxy, default_port=sip.default_port).host
        resolve("sip.outbound_proxy", proxy, "the calls the agent places cannot be sent there")
    for i, host in enumerate(sip.trusted_hosts):
        sources.append(resolve(f"sip.trusted_hosts[{i}]", host))
    if sip.allow_any_caller:
        who = "any address (sip.allow_any_caller: true)"
    elif registrar is None and not sip.trusted_hosts:
        who = "loopback only (direct mode without sip.trusted_hosts)"
    else:
        who = ", ".join(sources)
    users = config.our_users()
    called = f"for {', '.join(users)}" if users else "for any user part"
    return f"trust:     calls from {who}, {called}", problems


def describe_recording(config: Config) -> tuple[str, list[ConfigError]]:
    """Where each call's transcript and recording go, and an error if this user cannot write them there now
    (the calls would still be answered, without them). A missing directory is not created here: the agent
    creates it at its first call, owned by the user it runs as."""
    recording = config.recording
    kinds = " and ".join(name for name, on in (("transcripts", recording.transcripts), ("audio", recording.audio))
                         if on)
    if not kinds:
        return "recording: off (recording.transcripts and recording.audio are false)", []
    directory = Path(recording.dir).absolute()
    relative = "" if Path(recording.dir).is_absolute() else ", relative to the working directory"
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    problem = directory_problem(directory)
    if problem is not None:
        error = config.key_problem("recording.dir", f"{problem} (checked as {user}): calls would be answered "
                                                    "without transcripts or recordings")
        return f"recording: {kinds} in {directory}{relative}: NOT WRITABLE as {user}", [error]
    state = "writable" if directory.exists() else "created at the first call"
    free = free_bytes(directory)
    space = "" if free is None else f", {free / 1e9:.1f} GB free"
    kept = (f"; kept {recording.keep_days:g} days" if recording.keep_days
            else "; kept for good (recording.keep_days)")
    return f"recording: {kinds} in {directory}{relative} ({state} as {user}{space}){kept}", []


def run_doctor(config: Config, out: Callable[[str], None] = print) -> bool:
    return asyncio.run(_doctor(config, out))


async def _doctor(config: Config, out: Callable[[str], None]) -> bool:
    steps: list[tuple[str, Step]] = [
        ("SIP registration" if config.sip.registrar else "SIP listen (direct mode)", _check_sip),
        ("RTP ports", _check_rtp),
        ("Realtime session", _check_realtime),
    ]
    if config.events.webhook is not None:
        steps.append(("call events receiver", _check_events))
    healthy = True
    for name, step in steps:
        try:
            detail = await step(config)
        except (SipagentError, OSError) as exc:
            out(f"FAIL  {name}: {exc}")
            healthy = False
        else:
            out(f"ok    {name}: {detail}")
    out("all checks passed" if healthy else "some checks failed")
    return healthy


async def _check_sip(config: Config) -> str:
    async def refuse(call: object) -> None:
        return None

    ua = UserAgent(ua_settings(config), refuse)
    await ua.start()
    try:
        host, port = ua.local_address
        if not config.sip.registrar:
            return f"bound {config.sip.transport} {HostPort(host, port)}; the PBX must send INVITEs here"
        domain = config.sip.effective_domain
        if not await ua.wait_registered(timeout=10.0):
            failed = [f"{account.username}@{domain} (state {ua.registration_states.get(account.name)})"
                      for account in ua.accounts if ua.registration_states.get(account.name) != "registered"]
            problem = f": {ua.registration_problem}" if ua.registration_problem else ""
            raise StepFailed(
                f"not registered as {', '.join(failed)} at {config.sip.registrar}{problem}; check the registrar "
                f"address, username, password and domain{' and sip.tls' if config.sip.transport == 'tls' else ''}"
            )
        names = ", ".join(f"{account.username}@{domain}" for account in ua.accounts)
        over = " over TLS" if config.sip.transport == "tls" else ""
        return f"registered {names} via {config.sip.registrar}{over}"
    finally:
        await ua.stop()


async def _check_rtp(config: Config) -> str:
    low, high = config.media.rtp_port_range
    allocator = PortAllocator(low, high)
    port, rtp, rtcp = allocator.bind_pair(config.sip.listen_address.host)
    rtp.close()
    rtcp.close()
    allocator.release(port)
    return f"can bind {config.media.rtp_ports} (tried {port}/{port + 1})"


async def _check_events(config: Config) -> str:
    """The receiver of events.webhook can be reached (DNS, TCP, TLS and its certificate). No event is posted:
    a receiver should only ever see real calls' events."""
    hook = config.events.webhook
    assert hook is not None
    try:
        async with asyncio.timeout(hook.timeout_s):
            address = await webhook.probe(hook.url)
    except TimeoutError:
        raise StepFailed(f"no connection within events.webhook.timeout_s ({hook.timeout_s:g} s)") from None
    except webhook.WebhookError as exc:
        raise StepFailed(str(exc)) from None
    except OSError as exc:
        raise StepFailed(f"cannot connect ({exc}); check events.webhook.url and the firewall") from None
    parts = urlsplit(hook.url)  # scheme and host only: a path or query may carry a token
    return f"{parts.scheme}://{parts.netloc} reachable at {address} (no event sent)"


async def _check_realtime(config: Config) -> str:
    rt = config.realtime
    server, endpoint = await realtime_endpoint(config)
    client = RealtimeClient.for_endpoint(endpoint, connect_timeout=rt.connect_timeout_s)
    try:
        await client.connect()
        await client.send(ev.session_update(session_settings(config), ev.check_dialect(rt.dialect)))
        async with asyncio.timeout(10.0):
            while True:
                event = await client.recv()
                if event["type"] == "session.updated":
                    return f"{endpoint.url.split('?')[0]} accepted the session ({rt.dialect}, {rt.audio_format})"
                if event["type"] == "error":
                    raise StepFailed(f"the server refused the session: {event.get('error', {}).get('message')}")
    except TimeoutError:
        raise StepFailed("no session.updated within 10 s") from None
    except RealtimeError as exc:
        raise StepFailed(f"{exc}; check realtime.url, realtime.model and the API key") from exc
    finally:
        with contextlib.suppress(Exception):
            await client.close()
        if server is not None:
            await server.stop()
