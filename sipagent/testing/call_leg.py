"""A call's SIP leg for tests of the bridge without SIP: what the bridge needs of the call
(sipagent.bridge.legs.CallLeg), with nothing behind it."""

from __future__ import annotations

import asyncio
from typing import Any

from sipagent.sip.call import REFER_UNDECIDED_S


class StubCallLeg:
    """Hanging up ends the call as "agent-hangup"; transfers are refused; the far end supports no option.
    Subclass it for a test that needs more of it (a transfer the PBX answers)."""

    from_uri = "sip:caller@127.0.0.1"

    def __init__(self, call_id: str = "test-call") -> None:
        self.call_id = call_id
        self.end_reason = ""
        self.ended = asyncio.Event()

    async def hangup(self) -> None:
        self.end_reason = "agent-hangup"
        self.ended.set()

    async def transfer(self, target: str, timeout: float = REFER_UNDECIDED_S) -> bool:
        return False

    async def transfer_replacing(self, other: Any, timeout: float = 30) -> bool:
        return False

    def peer_supports(self, option: str) -> bool:
        return False
