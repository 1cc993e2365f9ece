"""Requests of one dialog to a named next hop (a Contact with a host name, common over TLS) each look the name
up: lookups run in threads and finish in any order, so the NOTIFY 100 and 200 the agent sends back to back could
leave in the wrong CSeq order (the far end refuses the older one, 500). Lookups of one name under way are shared,
and their waiters go on in the order they asked."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sipagent.sip.ua import IncomingCall, UaSettings, UserAgent


async def _ignore(call: IncomingCall) -> None:
    return None


def agent() -> UserAgent:
    return UserAgent(UaSettings(registrar=None, transport="udp", username="agent", password="", domain="127.0.0.1",
                                listen_host="127.0.0.1", listen_port=0, public_host=None, expires=300, max_calls=2,
                                trusted_hosts=[], codecs=["PCMU"]), _ignore)


def test_concurrent_lookups_of_one_name_are_one_and_answer_in_the_order_asked() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        asked: list[str] = []
        delays = [0.2, 0.0]  # the first lookup slower than the second: two of them would finish the other way

        async def getaddrinfo(host: str, port: Any, **kwargs: Any) -> list[Any]:
            asked.append(host)
            await asyncio.sleep(delays.pop(0))
            address = f"192.0.2.{len(asked)}"
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (address, 0))]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        ua = agent()
        order: list[tuple[str, list[str]]] = []

        async def resolve(who: str) -> None:
            order.append((who, await ua._resolve_all("pbx.example.com")))

        await asyncio.gather(resolve("NOTIFY 100"), resolve("NOTIFY 200"))
        assert asked == ["pbx.example.com"]
        assert order == [("NOTIFY 100", ["192.0.2.1"]), ("NOTIFY 200", ["192.0.2.1"])]
        assert ua._lookups == {}
        # Done: the next request looks the name up afresh (an address may change), and a failure reaches it.
        delays.append(0.0)
        assert await ua._resolve_all("pbx.example.com") == ["192.0.2.2"]

    asyncio.run(main())


def test_a_waiter_cancelled_leaves_the_others_their_lookup_and_a_failure_reaches_every_waiter() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def getaddrinfo(host: str, port: Any, **kwargs: Any) -> list[Any]:
            await asyncio.sleep(0.05)
            if host == "nowhere.invalid":
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.7", 0))]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        ua = agent()
        first = asyncio.ensure_future(ua._resolve_all("pbx.example.com"))
        second = asyncio.ensure_future(ua._resolve_all("pbx.example.com"))
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == ["192.0.2.7"]
        failures = await asyncio.gather(ua._resolve_all("nowhere.invalid"), ua._resolve_all("nowhere.invalid"),
                                        return_exceptions=True)
        assert all(isinstance(failure, OSError) for failure in failures)
        with pytest.raises(asyncio.CancelledError):
            await first

    asyncio.run(main())
