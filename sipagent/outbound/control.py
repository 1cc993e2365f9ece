"""The control API: place, watch and end outbound calls over HTTP, on a listener of its own.

    POST   /v1/calls        {"to": "2002", "profile": "sales", "variables": {"name": "Ada"}}  -> 201 {call}
    GET    /v1/calls/{id}   -> 200 {call}
    DELETE /v1/calls/{id}   -> 202 {call}: hung up (answered) or cancelled (dialing, ringing)

Every request carries ``Authorization: Bearer <control.token>`` (compared in constant time), checked
before anything else is looked at or read: a client without it learns nothing, not even which paths
exist (401). A request over a limit gets 429 with Retry-After; calls are not queued (docs/outbound.md).

``ControlApi`` maps one request to one response with no I/O of its own; ``start_control_server`` is the
asyncio listener around it, built on sipagent.observability.http like the health endpoint.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections.abc import Callable, Collection
from http import HTTPStatus
from typing import Any

from sipagent import strict_json
from sipagent.bridge.context import check_call_variables
from sipagent.config import Config
from sipagent.observability.http import (
    HttpServer,
    RequestHead,
    Response,
    read_body,
    read_head,
)
from sipagent.observability.metrics import Metrics
from sipagent.outbound.calls import CallRefused, CallRequest, OutboundCalls, Place, retry_after_header
from sipagent.outbound.target import dial_uri

log = logging.getLogger(__name__)

CALLS_PATH = "/v1/calls"
_CALL_PATH = re.compile(r"/v1/calls/([A-Za-z0-9_\-]{1,64})")
_FIELDS = frozenset({"to", "profile", "variables"})
_CHALLENGE = (("WWW-Authenticate", 'Bearer realm="sipagent"'),)
REFUSED_LOG_S = 10.0  # at most one warning per this many seconds about requests refused for their token


def _error(status: HTTPStatus, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response.json(status, {"error": message}, headers)


class ControlApi:
    """The API's rules: authentication, routing, validation of what a client sends, and the answers."""

    def __init__(self, calls: OutboundCalls, token: str, *, profiles: Collection[str], default_profile: str,
                 domain: str, tls: bool = False, max_body_bytes: int = 16384) -> None:
        if not token:
            raise ValueError("the control API needs a token")
        self.calls = calls
        self._token = token.encode()
        self.profiles = frozenset(profiles)
        self.default_profile = default_profile
        self.domain = domain
        self.tls = tls  # SIP over TLS: sips: targets are possible
        self.max_body_bytes = max_body_bytes

    def __repr__(self) -> str:  # never let the token reach a log line
        return f"ControlApi(domain={self.domain!r}, token=***)"

    def authorized(self, head: RequestHead) -> bool:
        scheme, _, credentials = head.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("latin-1"), self._token)

    def preflight(self, head: RequestHead) -> Response | None:
        """What to answer before reading a body: 401 without the token, 413 for a body over the limit,
        405/404 for what no body can fix. None: read the body and ``handle`` it."""
        if not self.authorized(head):
            return _error(HTTPStatus.UNAUTHORIZED, "send Authorization: Bearer <control.token>", _CHALLENGE)
        if head.content_length > self.max_body_bytes:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {self.max_body_bytes} bytes")
        path = head.path
        if path == CALLS_PATH:
            if head.method != "POST":
                return _error(HTTPStatus.METHOD_NOT_ALLOWED, "use POST", (("Allow", "POST"),))
            return None
        if _CALL_PATH.fullmatch(path) is None:
            return _error(HTTPStatus.NOT_FOUND, "no such resource")
        if head.method not in ("GET", "DELETE"):
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET or DELETE", (("Allow", "GET, DELETE"),))
        return None

    def handle(self, head: RequestHead, body: bytes) -> Response:
        """The answer to an authorized request that passed ``preflight``."""
        early = self.preflight(head)
        if early is not None:
            return early
        if head.path == CALLS_PATH:
            return self._create(head, body)
        match = _CALL_PATH.fullmatch(head.path)
        assert match is not None
        call_id = match.group(1)
        call = self.calls.cancel(call_id) if head.method == "DELETE" else self.calls.get(call_id)
        if call is None:
            return _error(HTTPStatus.NOT_FOUND, "no such call (or it ended long ago)")
        if head.method == "DELETE":
            log.info("control API: hang up %s", call_id)
            return Response.json(HTTPStatus.ACCEPTED, call.to_json())
        return Response.json(HTTPStatus.OK, call.to_json())

    def _create(self, head: RequestHead, body: bytes) -> Response:
        content_type = head.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return _error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json")
        try:
            request = self.parse_request(body)
        except ValueError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        try:
            call = self.calls.start(request)
        except CallRefused as exc:
            # Shutting down is not the client's excess: 503, as for any service that is going away.
            status = HTTPStatus.SERVICE_UNAVAILABLE if exc.reason == "shutdown" else HTTPStatus.TOO_MANY_REQUESTS
            return Response.json(status, {"error": str(exc), "reason": exc.reason},
                                 (("Retry-After", retry_after_header(exc.retry_after_s)),))
        return Response.json(HTTPStatus.CREATED, call.to_json(), (("Location", f"{CALLS_PATH}/{call.id}"),))

    def parse_request(self, body: bytes) -> CallRequest:
        """A POST body as a checked CallRequest; ValueError saying what is wrong (safe to send back)."""
        try:
            # A field given twice: a gateway in front that checked one "to" must not see the other dialled.
            data: Any = strict_json.loads(body.decode("utf-8"))
        except strict_json.DuplicateKey as exc:
            raise ValueError(f"field {exc}") from None
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or a number of thousands of digits
            raise ValueError("expected a JSON object in UTF-8") from None
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown field {unknown[0][:40]!r} (fields: to, profile, variables)")
        to = dial_uri(data.get("to"), self.domain, tls=self.tls)
        profile = data.get("profile", self.default_profile)
        if not isinstance(profile, str) or profile not in self.profiles:
            raise ValueError(f"profile: expected one of {', '.join(sorted(self.profiles))}")
        return CallRequest(to, profile, check_call_variables(data.get("variables", {})))


class ControlServer(HttpServer):
    """The running control API listener."""

    name = "control API"

    def __init__(self, api: ControlApi) -> None:
        super().__init__()
        self.api = api
        self._refused = 0  # requests refused for their token since the last warning about them
        self._refused_logged_at = -REFUSED_LOG_S

    async def respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Response:
        head = await read_head(reader)
        response = self.api.preflight(head)
        if response is None:
            return self.api.handle(head, await read_body(reader, head, self.api.max_body_bytes))
        if response.status == HTTPStatus.UNAUTHORIZED:
            self._refused_request(head, writer.get_extra_info("peername"))
        return response

    def _refused_request(self, head: RequestHead, peer: tuple[str, int] | None) -> None:
        """One warning per REFUSED_LOG_S at most, naming the latest and counting the rest: someone trying
        tokens must not be able to fill the disk with our log."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at < REFUSED_LOG_S:
            return
        more = f" (and {self._refused - 1} more since the last such line)" if self._refused > 1 else ""
        log.warning("control API: %s %r refused from %s: no valid token%s", head.method, head.path[:64],
                    peer[0] if peer else "?", more)
        self._refused, self._refused_logged_at = 0, now


async def start_control_server(host: str, port: int, api: ControlApi) -> ControlServer:
    """Listen on ``host:port`` (port 0 picks a free one) for the control API."""
    server = ControlServer(api)
    await server.listen(host, port)
    log.info("control API on %s%s", server.base_url, CALLS_PATH)
    return server


class OutboundService:
    """What the agent holds for outbound calling: the calls, and the control API's listener (None: off)."""

    def __init__(self, calls: OutboundCalls, server: ControlServer | None) -> None:
        self.calls = calls
        self.server = server

    def reload(self, config: Config) -> None:
        """SIGHUP: new profiles and limits for requests from now on (calls going on keep theirs). The
        listener's address and token need a restart."""
        registry = self.calls.registry
        registry.max_calls = config.outbound_max_calls
        registry.bucket.rate = config.outbound.calls_per_second
        registry.bucket.burst = max(1.0, config.outbound.calls_per_second)
        if self.server is not None:
            api = self.server.api
            api.profiles = frozenset(config.profiles())
            api.default_profile = config.outbound.profile or "default"

    async def close(self) -> None:
        """Stop listening, then end every outbound call still going (hung up, or CANCELled)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        await self.calls.close()


async def start_outbound(config: Config, place: Place, metrics: Metrics | None = None,
                         sip_room: Callable[[], bool] | None = None) -> OutboundService:
    """The agent's outbound side from the configuration: limits from ``outbound``, the API from ``control``
    (listening only when ``control.listen`` is set). ``place`` is the agent's dial-and-bridge coroutine,
    ``sip_room`` whether ``sip.max_calls`` leaves room for one more call (OutboundCalls)."""
    calls = OutboundCalls(place, max_calls=config.outbound_max_calls,
                          calls_per_second=config.outbound.calls_per_second, history=config.control.history,
                          metrics=metrics, sip_room=sip_room)
    address = config.control.listen_address
    server = None
    if address is not None:
        profiles = config.profiles()
        api = ControlApi(calls, config.control.token, profiles=list(profiles),
                         default_profile=config.outbound.profile or "default", domain=config.sip.effective_domain,
                         tls=config.sip.transport == "tls",
                         max_body_bytes=config.control.max_body_bytes)
        server = await start_control_server(address.host, address.port, api)
    return OutboundService(calls, server)
