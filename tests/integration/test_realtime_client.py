"""RealtimeClient over real WebSockets: handshake headers, normalisation, failures and drops."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from sipagent.realtime import events as ev
from sipagent.realtime.client import RealtimeClient, RealtimeConnectError, RealtimeConnectionLost
from sipagent.realtime.providers import endpoint_for, local_endpoint

pytestmark = pytest.mark.timeout(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Peer:
    """A scripted Realtime server: records the request and what the client sends, replies as told."""

    def __init__(self, replies: list[dict[str, Any]], drop_after: int | None = None) -> None:
        self.replies = replies
        self.drop_after = drop_after
        self.headers: dict[str, str] = {}
        self.path = ""
        self.received: list[dict[str, Any]] = []

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers = dict(ws.request.headers.raw_items())
        self.path = ws.request.path
        for reply in self.replies:
            await ws.send(json.dumps(reply))
        await ws.send("this is not json")
        async for message in ws:
            self.received.append(json.loads(message))
            if self.drop_after is not None and len(self.received) >= self.drop_after:
                ws.transport.abort()  # a network drop: no close frame
                return


def test_client_sends_headers_and_normalises_beta_events() -> None:
    async def run() -> None:
        peer = Peer([{"type": "response.audio.delta", "delta": "AAA="}, {"type": "something.new", "x": 1}])
        async with serve(peer.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            endpoint = local_endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "beta", model="m")
            client = RealtimeClient.for_endpoint(endpoint)
            await client.connect()
            assert client.connected
            first = await client.recv()
            assert first == {"type": "response.output_audio.delta", "delta": "AAA="}
            assert ev.decode_audio(first) == b"\x00\x00"
            assert (await client.recv())["type"] == "something.new"  # unknown tolerated; bad JSON skipped
            await client.send(ev.response_create())
            await client.send_audio(b"\x01\x00")
            await asyncio.sleep(0.1)
            await client.close()
            assert not client.connected
            assert [e async for e in client] == []
        assert peer.headers["OpenAI-Beta"] == "realtime=v1"
        assert peer.path == "/v1/realtime?model=m"
        assert peer.received == [{"type": "response.create"}, ev.audio_append(b"\x01\x00")]

    asyncio.run(run())


def test_iteration_ends_cleanly_on_close_and_raises_on_drop() -> None:
    async def run() -> None:
        peer = Peer([{"type": "session.created"}], drop_after=1)
        async with serve(peer.handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime", {"Authorization": "Bearer k"})
            await client.connect()
            seen: list[str] = []

            async def consume() -> None:
                async for event in client:
                    seen.append(event["type"])

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.1)
            await client.send(ev.audio_commit())
            with pytest.raises(RealtimeConnectionLost):
                await asyncio.wait_for(task, 10)
            assert seen == ["session.created"]
            assert peer.headers["Authorization"] == "Bearer k"

            closed = RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime")
            await closed.connect()
            task = asyncio.create_task(closed.run(lambda e: None))
            await asyncio.sleep(0.1)
            await closed.close()
            await asyncio.wait_for(task, 10)  # returns, no exception

    asyncio.run(run())


def test_connect_failures_raise_typed_errors() -> None:
    async def run() -> None:
        with pytest.raises(RealtimeConnectError) as refused:
            await RealtimeClient(f"ws://127.0.0.1:{free_port()}/v1/realtime", connect_timeout=5).connect()
        assert isinstance(refused.value.__cause__, OSError)

        async def reject(ws: ServerConnection) -> None:
            await ws.close()

        async def process_request(connection: ServerConnection, request: Any) -> Any:
            return connection.respond(401, "bad key\n")

        async with serve(reject, "127.0.0.1", 0, process_request=process_request) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            with pytest.raises(RealtimeConnectError) as denied:
                await RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime").connect()
            assert denied.value.status == 401

        # A TCP listener that never answers the handshake.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        try:
            port = listener.getsockname()[1]
            with pytest.raises(RealtimeConnectError, match="no answer"):
                await RealtimeClient(f"ws://127.0.0.1:{port}/v1/realtime", connect_timeout=0.5).connect()
        finally:
            listener.close()

    asyncio.run(run())


def test_client_against_local_backend_rejects_wrong_path() -> None:
    from sipagent.realtime.local.brain import LocalBrainConfig
    from sipagent.realtime.local.server import LocalRealtimeServer

    async def run() -> None:
        async with LocalRealtimeServer(LocalBrainConfig()) as server:
            with pytest.raises(RealtimeConnectError) as err:
                await RealtimeClient(f"ws://127.0.0.1:{server.port}/nope").connect()
            assert err.value.status == 404
            client = RealtimeClient(server.url)
            await client.connect()
            assert (await client.recv())["type"] == "session.created"
            await client.close()

    asyncio.run(run())


def test_local_endpoint_sends_an_api_key_as_the_bearer_token() -> None:
    async def run() -> None:
        for api_key, expected in (("local-token", "Bearer local-token"), ("", None)):
            peer = Peer([{"type": "session.created"}])
            async with serve(peer.handler, "127.0.0.1", 0) as server:
                port = next(iter(server.sockets)).getsockname()[1]
                endpoint = endpoint_for("local", url=f"ws://127.0.0.1:{port}/v1/realtime", api_key=api_key)
                assert "local-token" not in repr(endpoint) and "local-token" not in str(endpoint.redacted_headers())
                client = RealtimeClient.for_endpoint(endpoint)
                await client.connect()
                assert (await client.recv())["type"] == "session.created"
                await client.close()
            assert peer.headers.get("Authorization") == expected

    asyncio.run(run())


def test_a_hostile_server_cannot_make_the_client_buffer_without_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message over the client's cap closes the connection (1009: the bridge reconnects as after any drop)
    instead of being buffered; nesting deeper than the interpreter's stack is skipped as unparseable."""
    import sipagent.realtime.client as client_module

    monkeypatch.setattr(client_module, "MAX_MESSAGE_BYTES", 300_000)
    deep = "[" * 100_000 + "]" * 100_000  # 200 kB: under the cap

    async def handler(ws: ServerConnection) -> None:
        await ws.send(deep)
        await ws.send(json.dumps({"type": "session.created", "session": {}}))
        await ws.send(json.dumps({"type": "x", "pad": "p" * 400_000}))  # over the cap
        await asyncio.sleep(2)

    async def run() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = RealtimeClient.for_endpoint(local_endpoint(f"ws://127.0.0.1:{port}/v1/realtime"))
            await client.connect()
            assert (await client.recv())["type"] == "session.created"
            with pytest.raises(RealtimeConnectionLost):
                await client.recv()
            await client.close()

    asyncio.run(run())


def test_deliver_to_takes_events_in_the_data_callback_and_leaves_the_rest_to_recv_in_order() -> None:
    delivered = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the client is connected and has its hook: a message before that goes to recv
        for event in ({"type": "a"}, {"type": "b"}, {"type": "c"}, {"type": "response.audio.delta", "delta": "AAA="}):
            await ws.send(json.dumps(event))
        await ws.send("this is not json")
        await (await ws.ping())  # the client answers it after it has dealt with every message before it
        delivered.set()
        async for message in ws:  # one more event for each one the client sends
            await ws.send(json.dumps({"type": "later", "n": json.loads(message)["n"]}))

    async def run() -> None:
        taken: list[dict[str, Any]] = []

        def take(event: dict[str, Any]) -> bool:
            if event["type"] == "b":
                return False  # left to recv: so is everything after it until recv has caught up
            taken.append(event)
            return True

        async with serve(handler, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            client = RealtimeClient.for_endpoint(local_endpoint(f"ws://127.0.0.1:{port}/v1/realtime", "beta"))
            client.deliver_to(take)  # kept across connect
            await client.connect()
            await client.send({"type": "start"})
            # All five in before recv takes any: once recv has emptied its queue, take is offered the next.
            await asyncio.wait_for(delivered.wait(), 5)
            assert taken == [{"type": "a"}]
            assert [(await client.recv())["type"] for _ in range(3)] == ["b", "c", "response.output_audio.delta"]
            await client.send({"type": "ping", "n": 1})  # the unparseable message was skipped by recv
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await client.recv()  # taken as it came: recv never sees it
            async with asyncio.timeout(5):  # the answer may come after that recv gave up: no matter
                while len(taken) < 2:
                    await asyncio.sleep(0.01)
            assert taken[1:] == [{"type": "later", "n": 1}]
            client.deliver_to(None)
            await client.send({"type": "ping", "n": 2})
            assert await client.recv() == {"type": "later", "n": 2}
            await client.close()

    asyncio.run(run())
