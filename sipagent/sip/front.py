"""The awaitable calls the layer above holds: thin asyncio fronts over a ``CallCore``.

A front turns the core's events into attributes, callbacks and awaitables (``ended``, ``media``, the end of
``answer``, a transfer's outcome); everything it asks of the call goes to the core, and the actions the core
returns go to the ``CallDriver`` (the user agent) to carry out. The front never touches a socket or a
transaction, and the driver reads the front only through its public surface (``core``, ``peer``,
``handle``). Calls we place have their own front, ``OutgoingCall`` (outgoing.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sipagent.errors import CallAbandoned, SipParseError
from sipagent.sdp import NegotiatedMedia, SessionDescription
from sipagent.sip.bodies import replaces_header
from sipagent.sip.call import (
    REFER_UNDECIDED_S,
    CallAction,
    CallCore,
    Dtmf,
    Ended,
    Established,
    Held,
    MediaChanged,
    ProvisionalAcked,
    ReofferAnswered,
    TransferProgress,
)
from sipagent.sip.dialog import Dialog
from sipagent.sip.identity import CallIdentity
from sipagent.sip.transport import Peer
from sipagent.sip.uri import parse_target_uri

logger = logging.getLogger(__name__)

# How long ``hangup`` waits for the answer to its BYE or CANCEL: a peer that is there answers in milliseconds, and
# a lost BYE has been sent three times by then (T1 0.5 s, doubling); the transaction itself goes on for 32 s.
HANGUP_ANSWER_WAIT_S = 4.0
EARLY_KEYS = 16  # keys kept for a call's first DTMF listener (a caller does not type more before the answer)


class CallDriver(Protocol):
    """What a front needs from the user agent: its clock, and someone to carry out the core's actions.
    ``drive`` returns the tasks of the requests it started (a front may await a BYE's answer)."""

    def now(self) -> float: ...

    def drive(self, call: CallFront, actions: list[CallAction]) -> list[asyncio.Task[None]]: ...


class CallFront:
    """What answered and placed calls share: media, DTMF, hold, hang-up, transfer, and the end."""

    def __init__(self, driver: CallDriver, core: CallCore, peer: Peer, local_host: str, account: str = "",
                 referred_by: str | None = None) -> None:
        self.core = core
        self.peer = peer  # where the INVITE came from (answered) or went first (placed)
        self.call_id = core.call_id
        self.account = account  # the name of the account the call is on ("": none)
        self.remote_host = peer.host
        # "UDP", "TCP" or "TLS": how the INVITE travelled. Media keys (SDES) may only travel over "TLS".
        self.transport = peer.transport
        # The address our SDP gives for this call's media (a dual-stack agent: of the offer's family; for a
        # call we place, also that of our Via and Contact).
        self.local_host = local_host
        self.media: NegotiatedMedia | None = None
        self.on_media_change: Callable[[NegotiatedMedia], None] | None = None
        self._on_dtmf: Callable[[str, int], None] | None = None
        self._early_keys: list[tuple[str, int]] = []  # keys that came before anyone listened (EARLY_KEYS)
        self.on_hold: Callable[[bool], None] | None = None
        self.ended = asyncio.Event()
        self.end_reason = ""
        self._driver = driver
        self._referred_by = referred_by
        self._settled = asyncio.Event()  # established or ended
        self._transfers: asyncio.Queue[TransferProgress] = asyncio.Queue()
        self._reoffered: asyncio.Future[ReofferAnswered] | None = None

    @property
    def on_dtmf(self) -> Callable[[str, int], None] | None:
        return self._on_dtmf

    @on_dtmf.setter
    def on_dtmf(self, callback: Callable[[str, int], None] | None) -> None:
        """The first listener also gets the keys that came before it: the layer above listens once ``answer``
        has returned, and a key signalled right behind the ACK (read with it) comes before that."""
        self._on_dtmf = callback
        if callback is not None:
            keys, self._early_keys = self._early_keys, []
            for digit, duration in keys:
                self._callback(callback, digit, duration)

    @property
    def state(self) -> str:
        return self.core.state

    def peer_supports(self, option: str) -> bool:
        """The far end listed ``option`` ("replaces") in the Supported or Require of its INVITE (a call we
        answered) or of its 2xx (a call we placed), RFC 3261 20.37: what it has not advertised is never asked
        of it (a phone may crash on a REFER with Replaces)."""
        return option.lower() in self.core.peer_options

    @property
    def dialog(self) -> Dialog | None:
        """The call's dialog (None for a call we place, until it is answered)."""
        return self.core.dialog

    # -- events from the driver --------------------------------------------------------------------

    def handle(self, event: CallAction) -> None:
        """One event of the core (the driver carries out the actions that are I/O)."""
        if isinstance(event, Established):
            self.media = event.media
            self._settled.set()
        elif isinstance(event, MediaChanged):
            self.media = event.media
            self._callback(self.on_media_change, event.media)
        elif isinstance(event, Held):
            self._callback(self.on_hold, event.held)
        elif isinstance(event, Dtmf):
            if self._on_dtmf is None:
                if len(self._early_keys) < EARLY_KEYS:
                    self._early_keys.append((event.digit, event.duration))
            else:
                self._callback(self._on_dtmf, event.digit, event.duration)
        elif isinstance(event, TransferProgress):
            self._transfers.put_nowait(event)
        elif isinstance(event, ReofferAnswered):
            if self._reoffered is not None and not self._reoffered.done():
                self._reoffered.set_result(event)
        elif isinstance(event, Ended):
            self.end_reason = event.reason
            self.ended.set()
            self._settled.set()
            if self._reoffered is not None and not self._reoffered.done():
                self._reoffered.set_result(ReofferAnswered(0, b""))
        else:
            self._event(event)

    def _event(self, event: CallAction) -> None:
        """Events only one kind of call cares for (ProvisionalAcked, Progress, Referred)."""

    def _callback(self, callback: Callable[..., None] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            logger.exception("call %s: callback %s failed", self.call_id, getattr(callback, "__name__", callback))

    # -- the API for the layer above ---------------------------------------------------------------

    def _drive(self, actions: list[CallAction]) -> list[asyncio.Task[None]]:
        return self._driver.drive(self, actions)

    async def hangup(self) -> None:
        """End the call: BYE once answered, 487 while ringing, CANCEL while dialing.

        The call is over for us as soon as its BYE is sent (RFC 3261 15.1.1): this waits for the far end's
        answer at most ``HANGUP_ANSWER_WAIT_S``. A phone that vanished never answers; its BYE goes on being
        retransmitted by the user agent until timer F (32 s), while whoever hung up lets go of the call's
        media and records. Cancelling this wait leaves the BYE's transaction running."""
        tasks = self._drive(self.core.hangup(self._driver.now()))
        if tasks:
            done, _ = await asyncio.wait(tasks, timeout=HANGUP_ANSWER_WAIT_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("call %s: hang-up failed", self.call_id, exc_info=task.exception())

    async def reoffer(self, offer: SessionDescription) -> tuple[int, bytes]:
        """Offer new media in a re-INVITE (hold with ``a=sendonly``, resume, another codec): the final status
        (0: none came) and, on a 2xx, the SDP answer, already applied to ``media``."""
        self._reoffered = asyncio.get_running_loop().create_future()
        self._drive(self.core.reoffer(offer, self._driver.now()))
        result = await self._reoffered
        return result.status, result.answer

    async def transfer(self, target: str, timeout: float = REFER_UNDECIDED_S) -> bool:
        """Blind transfer with REFER; True when the target answered (NOTIFY sipfrag with a 2xx), or the far end
        ended our leg after accepting the REFER (``end_reason`` "transferred" either way: the caller is where
        the REFER sent them). On failure the call goes on.

        The wait is as long as a REFER stays undecided (2 minutes), not a ring's length: a PBX reports the
        outcome when the target answers (Asterisk sends its 200 only once audio reaches the caller: from a
        queue without music, when a person answers), and by then the caller has long left our leg. Told of a
        failure at 30 s, the model went on talking to an empty line."""
        if self.state != "confirmed":
            raise RuntimeError(f"cannot transfer a call in state {self.state}")
        try:
            refer_to = f"<{parse_target_uri(target)}>"
        except SipParseError as exc:
            logger.warning("call %s: transfer target %r refused: %s", self.call_id, target[:80], exc)
            return False
        return await self._refer(refer_to, target, timeout)

    async def transfer_replacing(self, other: CallFront, timeout: float = 30) -> bool:
        """Attended transfer (RFC 3891): REFER this call's peer to ``other``'s remote target with Replaces, so
        that it takes the place of our dialog with ``other``'s peer. True when the NOTIFY reports a 2xx; False
        when the REFER is refused or the transfer fails."""
        if self.state != "confirmed":
            raise RuntimeError(f"cannot transfer a call in state {self.state}")
        dialog = other.core.dialog
        if other.state != "confirmed" or dialog is None:
            raise RuntimeError(f"cannot replace a call in state {other.state}")
        target = parse_target_uri(str(dialog.remote_target))
        target.headers = {}
        # The receiver of the INVITE with Replaces matches to-tag against its own tag (our remote tag).
        refer_to = f"<{target}?{replaces_header(dialog.call_id, dialog.remote_tag, dialog.local_tag)}>"
        return await self._refer(refer_to, str(target), timeout)

    async def _refer(self, refer_to: str, target: str, timeout: float) -> bool:
        while not self._transfers.empty():  # what an earlier transfer left behind
            self._transfers.get_nowait()
        self._drive(self.core.transfer(refer_to, self._driver.now(), referred_by=self._referred_by))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                progress = await asyncio.wait_for(self._transfers.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                logger.info("call %s: transfer to %s timed out", self.call_id, target[:80])
                return False
            if progress.phase == "refer":
                if not progress.status or progress.status >= 300:
                    return False
                continue
            if progress.status >= 300:
                logger.info("call %s: transfer to %s failed with %s", self.call_id, target[:80], progress.status)
                return False
            if progress.status >= 200:
                return True


class IncomingCall(CallFront):
    """One incoming call, from INVITE to its end. Created by the UA; given to ``on_call``.

    Public attributes: ``call_id``, ``from_uri``, ``to_uri``, ``identity`` (caller, dialed number, redirecting
    number and the configured headers, cleaned: see identity.py), ``transport`` (how the INVITE came: "UDP",
    "TCP" or "TLS"), ``local_host`` (the address we advertise on this call, for the SDP too), ``remote_host``
    (where the INVITE came from), ``offer`` (parsed SDP offer; None for an INVITE without SDP, a late offer:
    ours then goes in the 200 OK and the caller's answer comes in the ACK), ``media`` (after answer),
    ``ended`` / ``end_reason``, ``state`` (ringing → answering → confirmed → ended) and the callbacks
    ``on_media_change`` (a re-INVITE or UPDATE offer was accepted) and ``on_dtmf`` (SIP INFO dtmf-relay).

    The call also keeps the session timer (RFC 4028): it answers refreshes, refreshes when it is the
    refresher, and ends the call with BYE when the session expires ("session-expired") or a refresh of ours
    finds the peer gone ("refresh-failed").
    """

    def __init__(self, driver: CallDriver, core: CallCore, peer: Peer, local_host: str, identity: CallIdentity,
                 account: str = "", referred_by: str | None = None) -> None:
        super().__init__(driver, core, peer, local_host, account, referred_by)
        invite = core.invite
        self.from_uri = str(invite.from_addr.uri)
        self.to_uri = str(invite.to_addr.uri)
        self.identity = identity
        self.offer: SessionDescription | None = core.offer
        self._prack = asyncio.Event()

    def __repr__(self) -> str:
        return f"IncomingCall({self.call_id!r}, {self.from_uri!r}, state={self.state})"

    def _event(self, event: CallAction) -> None:
        if isinstance(event, ProvisionalAcked):
            self._prack.set()

    def handle(self, event: CallAction) -> None:
        super().handle(event)
        if isinstance(event, Ended):
            self._prack.set()

    async def answer(self, rtp_host: str, rtp_port: int) -> NegotiatedMedia:
        """Send 200 OK with our SDP answer (our offer, after an INVITE without SDP) and wait for the ACK;
        returns the negotiated media.

        Raises SdpError when no codec matches (after sending 488; after a late offer, after a BYE),
        CallAbandoned when the far end ended the call first (CANCEL, or BYE before its ACK), SipTimeout when
        no ACK arrives (the call is then ended with BYE), RuntimeError when it was answered already.
        """
        if self.state == "ended":
            raise CallAbandoned(f"the caller ended the call before it was answered ({self.end_reason})")
        if self.state != "ringing":
            raise RuntimeError(f"cannot answer a call in state {self.state}")
        if self.core.awaiting_prack:
            # Our 2xx may not overtake the PRACK of our reliable 180 (RFC 3262 3 would allow it for an 18x
            # without SDP, but a PBX then sees its PRACK answered after the call).
            await self._prack.wait()
        if self.state != "ringing":
            raise CallAbandoned(f"the caller ended the call before it was answered ({self.end_reason})")
        self._drive(self.core.answer(rtp_host, rtp_port, self._driver.now()))
        await self._settled.wait()
        error = self.core.answer_error
        if error is not None:
            raise error
        # No ACK came: a CANCEL, or a BYE first. A BYE read right behind the ACK ends a call that was answered
        # (uvloop reads both at once): its media is returned, and ``ended`` says the rest.
        if self.media is None:
            raise CallAbandoned(f"the caller ended the call before its ACK ({self.end_reason})")
        logger.info("call %s: answered with %s, remote RTP %s:%s", self.call_id, self.media.codec,
                    self.media.remote_host, self.media.remote_port)
        return self.media

    async def reject(self, status: int = 486) -> None:
        """Reject an unanswered call with a final error response (486 Busy Here by default)."""
        self._drive(self.core.reject(status, self._driver.now()))


__all__ = ["CallDriver", "CallFront", "IncomingCall"]
