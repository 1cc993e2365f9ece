"""The client's own framing of the audio appends against websockets' framing, with no socket."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import SERVER, Protocol, State

from sipagent.realtime.client import MaskSource, client_text_frame

LENGTHS = [0, 1, 125, 126, 127, 1325, 65535, 65536, 70001]  # each side of the 7/16/64-bit length forms


@pytest.mark.parametrize("n", LENGTHS)
def test_client_text_frame_is_what_websockets_serializes(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(n)
    mask = os.urandom(4)
    monkeypatch.setattr("websockets.frames.secrets.token_bytes", lambda size: mask)  # the same key
    assert client_text_frame(data, mask) == Frame(Opcode.TEXT, data).serialize(mask=True, extensions=[])


def test_a_server_reads_the_frames_back() -> None:
    server = Protocol(SERVER)  # the sans-I/O core past its handshake, as a server connection runs it
    masks = MaskSource()
    texts = [('{"type":"input_audio_buffer.append","audio":"' + "A" * n + '"}').encode() for n in LENGTHS]
    server.receive_data(b"".join(client_text_frame(text, masks.next()) for text in texts))
    received = server.events_received()
    assert [(f.opcode, f.fin, bytes(f.data)) for f in received] == [(Opcode.TEXT, True, t) for t in texts]
    assert server.data_to_send() == [] and server.state is State.OPEN  # no protocol error, no close


def test_mask_source_gives_fresh_four_byte_keys_across_blocks() -> None:
    masks = MaskSource()
    keys = [masks.next() for _ in range(3 * MaskSource.BLOCK_BYTES // 4)]
    assert {len(k) for k in keys} == {4}
    per_block = MaskSource.BLOCK_BYTES // 4
    blocks = [b"".join(keys[i : i + per_block]) for i in range(0, len(keys), per_block)]
    assert len(set(blocks)) == 3  # a new random block each time, not the same one again
