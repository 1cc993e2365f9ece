"""Pure pieces of the per-frame hot path: the RTP fast header read, the backend's VAD levels and delta JSON,
and the choice of event loop."""

from __future__ import annotations

import json
import math
import random
import struct

import pytest
import uvloop

from sipagent.agent import LOOP_ENV, event_loop_factory
from sipagent.errors import ConfigError, RtpError
from sipagent.realtime import events
from sipagent.realtime.local.server import _delta_json
from sipagent.realtime.local.vad import _BLOCK_BYTES, block_db, block_levels_db
from sipagent.rtp.packet import RtpPacket, parse_media


def test_parse_media_matches_rtp_packet_for_every_header_shape() -> None:
    rng = random.Random(5)
    for csrc, extension, padding in [([], False, 0), ([7, 8], False, 0), ([], True, 0), ([], False, 4),
                                     ([1], True, 3)]:
        packet = RtpPacket(payload_type=rng.randrange(128), sequence=rng.randrange(65536),
                           timestamp=rng.randrange(2**32), ssrc=rng.randrange(2**32),
                           payload=bytes(rng.randrange(256) for _ in range(160)), marker=True, csrc=csrc,
                           extension=extension, extension_data=b"abcd" if extension else b"", padding=padding)
        parsed = RtpPacket.parse(packet.serialize())
        assert parse_media(packet.serialize()) == (parsed.payload_type, parsed.sequence, parsed.timestamp,
                                                   parsed.ssrc, parsed.payload)


def test_parse_media_rejects_what_rtp_packet_rejects() -> None:
    for bad in (b"\x80\x00", b"\x40" + bytes(20), b"\xa0" + bytes(11) + b"\x00"):
        with pytest.raises(RtpError):
            parse_media(bad)
    assert parse_media(struct.pack("!BBHII", 0x80, 0, 1, 2, 3)) == (0, 1, 2, 3, b"")  # header alone


def test_backend_vad_levels_are_the_block_powers_in_dbfs() -> None:
    rng = random.Random(1)
    samples = [rng.randrange(-32768, 32768) >> rng.randrange(16) for _ in range(1500)]
    data = struct.pack(f"<{len(samples)}h", *samples)
    blocks = len(data) // _BLOCK_BYTES
    per_block = _BLOCK_BYTES // 2
    expected = []
    for i in range(blocks):  # the definition, in plain Python integers
        block = samples[i * per_block : (i + 1) * per_block]
        expected.append(10 * math.log10(sum(x * x for x in block) / per_block / 32768**2))
    assert block_levels_db(data, blocks) == pytest.approx(expected, abs=1e-9)
    assert block_levels_db(data, blocks) == [block_db(data[i * _BLOCK_BYTES : (i + 1) * _BLOCK_BYTES])
                                             for i in range(blocks)]
    assert block_levels_db(bytes(2 * _BLOCK_BYTES) + data, 2) == [-120.0, -120.0]
    assert block_levels_db(data, 0) == []
    assert block_db(b"") == -120.0


def test_spliced_delta_json_is_what_json_dumps_gives() -> None:
    event = {"type": "response.output_audio.delta", "event_id": "ev\"1", "response_id": "resp_1",
             "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "AAEC/+==" * 300}
    assert _delta_json(event) == events.to_json(event)
    assert json.loads(_delta_json(event)) == event
    odd = {"type": "response.output_audio.delta", "delta": "AA==", "extra": "after"}  # not spliced
    assert _delta_json(odd) == events.to_json(odd)


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOOP_ENV, raising=False)
    assert event_loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv(LOOP_ENV, "asyncio")
    assert event_loop_factory() is None
    monkeypatch.setenv(LOOP_ENV, "trio")
    with pytest.raises(ConfigError, match=LOOP_ENV):
        event_loop_factory()
