"""Dialog state (RFC 3261 section 12) of an INVITE, from either side: the calls we answer (UAS) and the
calls we place (UAC)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from sipagent.errors import SipParseError
from sipagent.sip.headers import CSeq, new_branch, new_tag
from sipagent.sip.message import Headers, SipRequest, SipResponse, build_response
from sipagent.sip.uri import NameAddr, SipUri

logger = logging.getLogger(__name__)

# Requests that may change the remote target (RFC 3261 12.2.2; UPDATE per RFC 3311).
TARGET_REFRESH = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str  # our name-addr (To of the INVITE, without its tag)
    remote_uri: str  # their name-addr (From of the INVITE, with its tag)
    remote_target: SipUri
    local_contact: str
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    state: str = "early"  # early → confirmed → terminated

    @classmethod
    def from_invite(cls, invite: SipRequest, local_contact: str, local_tag: str | None = None) -> Dialog:
        """The UAS dialog created by answering ``invite`` (RFC 3261 12.1.1)."""
        contacts = invite.headers.get_all("Contact")
        if not contacts:
            raise SipParseError("INVITE without Contact")
        remote = invite.from_addr
        if not remote.tag:
            raise SipParseError("INVITE without From tag")
        to = invite.to_addr
        to.params.pop("tag", None)
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag or new_tag(),
            remote_tag=remote.tag,
            local_uri=str(to),
            remote_uri=invite.headers.get("From") or "",
            remote_target=NameAddr.parse(contacts[0]).uri,
            local_contact=local_contact,
            route_set=invite.headers.get_all("Record-Route"),
            remote_seq=invite.cseq.seq,
        )

    @classmethod
    def from_response(cls, invite: SipRequest, response: SipResponse, local_contact: str) -> Dialog:
        """The UAC dialog created by a 2xx (or 1xx with a To tag) to our ``invite`` (RFC 3261 12.1.2): the
        route set is the response's Record-Route reversed, the remote target its Contact."""
        remote = response.to_addr
        if not remote.tag:
            raise SipParseError("dialog-creating response without To tag")
        contacts = response.headers.get_all("Contact")
        if not contacts:
            raise SipParseError("dialog-creating response without Contact")
        local = invite.from_addr
        local_tag = local.tag or ""
        local.params.pop("tag", None)
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=remote.tag,
            local_uri=str(local),
            remote_uri=response.headers.get("To") or "",
            remote_target=NameAddr.parse(contacts[0]).uri,
            local_contact=local_contact,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=invite.cseq.seq,
            state="confirmed" if 200 <= response.status < 300 else "early",
        )

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def matches(self, request: SipRequest) -> bool:
        """Whether an incoming request belongs to this dialog (Call-ID and both tags)."""
        try:
            return (
                request.call_id == self.call_id
                and request.to_addr.tag == self.local_tag
                and request.from_addr.tag == self.remote_tag
            )
        except SipParseError:
            return False

    def response(
        self, request: SipRequest, status: int, reason: str | None = None, body: bytes = b"",
        content_type: str | None = None,
    ) -> SipResponse:
        """A response in this dialog: our To tag, and our Contact on 1xx/2xx to INVITE."""
        resp = build_response(request, status, reason, to_tag=self.local_tag)
        if request.method == "INVITE" and 100 < status < 300:
            resp.headers.add("Contact", self.local_contact)
        if content_type:
            resp.headers.add("Content-Type", content_type)
        resp.body = body
        return resp

    def confirm(self) -> None:
        """Our 2xx was sent (or its ACK received): the dialog is confirmed."""
        if self.state == "early":
            self.state = "confirmed"

    def terminate(self) -> None:
        self.state = "terminated"

    def check_request(self, request: SipRequest) -> int | None:
        """Validate an in-dialog request's CSeq (RFC 3261 12.2.2) and refresh the remote target.

        Returns the error status to answer with (500 for an out-of-order CSeq), or None when the
        request can be processed. ACK and CANCEL reuse the INVITE's number and are not checked.
        """
        cseq = request.cseq
        if request.method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and cseq.seq <= self.remote_seq:
                logger.info("in-dialog %s with old CSeq %d", request.method, cseq.seq)
                return 500
            self.remote_seq = cseq.seq
        if request.method in TARGET_REFRESH:
            contacts = request.headers.get_all("Contact")
            if contacts:
                self.remote_target = NameAddr.parse(contacts[0]).uri
        return None

    def next_hop(self) -> SipUri:
        """Where an in-dialog request goes first: the first route (loose routing) or the target."""
        if self.route_set:
            return NameAddr.parse(self.route_set[0]).uri
        return self.remote_target

    def create_request(
        self, method: str, via_sent_by: str, transport: str = "UDP", body: bytes = b"",
        content_type: str | None = None, extra: list[tuple[str, str]] | None = None,
    ) -> SipRequest:
        """A new in-dialog request (BYE, REFER, INFO, re-INVITE...) with the next local CSeq (12.2.1.1)."""
        self.local_seq += 1
        return self._request(method, self.local_seq, via_sent_by, transport, body, content_type, extra)

    def create_ack(self, invite: SipRequest, via_sent_by: str, transport: str = "UDP") -> SipRequest:
        """The ACK for a 2xx to our INVITE or re-INVITE (RFC 3261 13.2.2.4): built like any request in the
        dialog, with the INVITE's CSeq number (it takes no number of its own) and the INVITE's credentials."""
        credentials = [(name, value) for name in ("Authorization", "Proxy-Authorization")
                       for value in invite.headers.get_all(name)]
        return self._request("ACK", invite.cseq.seq, via_sent_by, transport, extra=credentials)

    def target_refreshed(self, response: SipResponse) -> None:
        """A 2xx to our re-INVITE or UPDATE names the remote target in its Contact (RFC 3261 12.2.1.2)."""
        contacts = response.headers.get_all("Contact")
        if 200 <= response.status < 300 and response.cseq.method in TARGET_REFRESH and contacts:
            self.remote_target = NameAddr.parse(contacts[0]).uri

    def _request(
        self, method: str, seq: int, via_sent_by: str, transport: str, body: bytes = b"",
        content_type: str | None = None, extra: list[tuple[str, str]] | None = None,
    ) -> SipRequest:
        uri = str(self.remote_target)
        routes = list(self.route_set)
        if routes and "lr" not in NameAddr.parse(routes[0]).uri.params:
            # Strict router (RFC 2543): it becomes the Request-URI; the target goes last in Route.
            uri = str(replace(NameAddr.parse(routes[0]).uri, headers={}))
            routes = [*routes[1:], f"<{self.remote_target}>"]
        headers = Headers()
        headers.add("Via", f"SIP/2.0/{transport.upper()} {via_sent_by};branch={new_branch()};rport")
        headers.add("Max-Forwards", "70")
        for route in routes:
            headers.add("Route", route)
        headers.add("From", f"{self.local_uri};tag={self.local_tag}")
        headers.add("To", self.remote_uri)
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", str(CSeq(seq, method)))
        if method in TARGET_REFRESH:
            headers.add("Contact", self.local_contact)
        for name, value in extra or []:
            headers.add(name, value)
        if content_type:
            headers.add("Content-Type", content_type)
        return SipRequest(method, uri, headers, body)

