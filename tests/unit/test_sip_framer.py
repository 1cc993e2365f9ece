"""The TCP framer against hostile streams: work per byte, size limits, Content-Length, keep-alives."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipagent.sip import message
from sipagent.sip.message import (
    MESSAGE_TOO_LARGE,
    SipResponse,
    StreamFramer,
    bad_request_for,
    find_head_end,
    head_within,
    parse_message,
)

ROUTING = (
    "Via: SIP/2.0/TCP 192.0.2.7:5060;branch=z9hG4bKf1\r\nFrom: <sip:a@192.0.2.7>;tag=1\r\n"
    "To: <sip:agent@192.0.2.1>\r\nCall-ID: framer-1\r\nCSeq: 1 OPTIONS\r\n"
)


def request(body: bytes = b"", extra: str = "", eol: str = "\r\n") -> bytes:
    head = f"OPTIONS sip:agent@192.0.2.1 SIP/2.0\r\n{ROUTING}{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.replace("\r\n", eol).encode() + body


class SearchSpy:
    """Stands in for the framer's head-end search and counts the bytes each search had to look at."""

    def __init__(self) -> None:
        self.scanned = 0

    def __call__(self, data: bytes | bytearray, start: int = 0, stop: int | None = None) -> tuple[int, int] | None:
        self.scanned += (len(data) if stop is None else min(len(data), stop)) - start
        return find_head_end(data, start, stop)


def test_a_head_trickled_byte_by_byte_is_searched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = SearchSpy()
    monkeypatch.setattr(message, "find_head_end", spy)
    big = request(extra="X-Filler: " + "a" * 20000 + "\r\n")
    framer = StreamFramer(max_message=len(big))
    out: list[bytes] = []
    for i in range(len(big)):
        out += framer.feed(big[i : i + 1])
    assert out == [big]
    # Each byte is looked at a bounded number of times (the overlap of a split "\r\n\r\n"), not once per read.
    assert spy.scanned <= 4 * len(big)


def test_content_length_is_read_once_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    original = StreamFramer._length

    def counting(head: bytes) -> int:
        calls.append(head)
        return original(head)

    monkeypatch.setattr(StreamFramer, "_length", staticmethod(counting))
    first, second = request(b"x" * 500), request(b"y" * 3)
    framer = StreamFramer()
    out: list[bytes] = []
    for byte in first + second:
        out += framer.feed(bytes([byte]))
    assert out == [first, second]
    assert len(calls) == 2


def test_a_head_over_the_limit_is_refused_with_its_complete_lines() -> None:
    start = request()[: request().index(b"Content-Length")]  # the routing headers, no blank line yet
    framer = StreamFramer(max_message=1000)
    assert framer.feed(start) == []
    assert framer.feed(b"X-Long: " + b"z" * 2000) == []
    assert framer.error is not None and framer.error.reason == MESSAGE_TOO_LARGE
    assert framer.head() == start  # the unfinished line is left out
    reply = bad_request_for(framer.head(), framer.error.reason)
    assert reply is not None
    response = parse_message(reply)
    assert isinstance(response, SipResponse) and response.status == 513
    assert response.call_id == "framer-1"


def test_a_body_over_the_limit_is_refused_before_it_arrives() -> None:
    data = request(b"b" * 600)
    framer = StreamFramer(max_message=len(data) - 1)
    assert framer.feed(data[: data.index(b"\r\n\r\n") + 4]) == []  # the head alone
    assert framer.error is not None and framer.error.reason == MESSAGE_TOO_LARGE
    assert framer.head().endswith(b"Content-Length: 600\r\n\r\n")
    # One byte more of room and the same message passes.
    assert StreamFramer(max_message=len(data)).feed(data) == [data]


@pytest.mark.parametrize("value", ["x", "-1", "1e3", "1234567890", "12 34"])
def test_a_bad_content_length_is_unframeable_and_answered_from_the_head(value: str) -> None:
    data = request(extra=f"l: {value}\r\n").replace(b"Content-Length: 0\r\n", b"")
    framer = StreamFramer()
    assert framer.feed(data) == []
    assert framer.error is not None and framer.error.reason == "bad Content-Length header"
    reply = bad_request_for(framer.head(), framer.error.reason)
    assert reply is not None and reply.startswith(b"SIP/2.0 400 bad Content-Length header\r\n")


def test_messages_before_an_unframeable_one_are_still_returned() -> None:
    good = request(b"ok")
    framer = StreamFramer(max_message=1000)
    # However the stream is split, the complete message ahead of the problem comes out, then nothing.
    assert framer.feed(good + request(b"x" * 2000)) == [good]
    assert framer.error is not None and framer.error.reason == MESSAGE_TOO_LARGE
    assert framer.head().startswith(b"OPTIONS ") and framer.head().endswith(b"Content-Length: 2000\r\n\r\n")
    assert framer.feed(good) == []


def test_double_crlfs_between_messages_are_pings() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [] and framer.pings == 1
    for piece in (b"\r", b"\n", b"\r", b"\n"):  # the same ping trickled
        assert framer.feed(piece) == []
    assert framer.pings == 2 and framer.buffered == 0
    a = request()
    assert framer.feed(b"\r\n" + a + b"\r\n" + a) == [a, a]  # single CRLFs around messages are not pings
    assert framer.pings == 2
    assert framer.feed(b"\n\n") == [] and framer.pings == 3  # bare LFs too


def test_buffered_counts_an_incomplete_message_from_its_first_byte() -> None:
    data = request(b"body")
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == [] and framer.buffered == 0
    assert framer.feed(data[:1]) == [] and framer.buffered == 1
    assert framer.feed(data[1:-1]) == [] and framer.buffered == len(data) - 1
    assert framer.feed(data[-1:] + data[:5]) == [data] and framer.buffered == 5


def test_head_within_reads_no_further_than_the_limit() -> None:
    data = request(b"B" * 100)
    head = data[: data.index(b"\r\n\r\n") + 4]
    assert head_within(data, len(head)) == head
    assert head_within(data, len(head) - 1) is None
    assert head_within(b"no blank line", 100) is None


_MESSAGES = st.lists(
    st.tuples(st.binary(max_size=40), st.sampled_from(["\r\n", "\n"]), st.sampled_from([b"", b"\r\n", b"\r\n\r\n"])),
    min_size=1, max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(_MESSAGES, st.lists(st.integers(1, 9), min_size=1, max_size=50))
def test_any_split_of_a_stream_frames_the_same_messages(
    parts: list[tuple[bytes, str, bytes]], sizes: list[int]
) -> None:
    messages = [request(body, eol=eol) for body, eol, _ in parts]
    stream = b"".join(gap + m for (_, _, gap), m in zip(parts, messages, strict=True))
    framer = StreamFramer()
    out: list[bytes] = []
    pos = 0
    for size in sizes * (len(stream) // len(sizes) + 1):
        if pos >= len(stream):
            break
        out += framer.feed(stream[pos : pos + size])
        pos += size
    assert out == messages
    assert framer.buffered == 0
    assert framer.pings == sum(gap == b"\r\n\r\n" for _, _, gap in parts)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40).map(lambda b: b.translate(bytes.maketrans(b"\x00\x01\x02", b"\r\n\n"))),
       st.integers(0, 10))
def test_find_head_end_agrees_with_the_grammar(data: bytes, start: int) -> None:
    """``find_head_end`` is the regex ``\\r?\\n\\r?\\n`` (leftmost, greedy) done with two ``find`` calls."""
    expected = re.compile(rb"\r?\n\r?\n").search(data, start)
    assert find_head_end(data, start) == (expected.span() if expected else None)
