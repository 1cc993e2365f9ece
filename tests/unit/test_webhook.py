"""The webhook HTTP client's pure parts, without sockets: request bytes out, response bytes in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipagent.bridge.webhook import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    BadResponse,
    RequestRefused,
    Response,
    ResponseParser,
    ResponseTooLarge,
    prepare,
)

# --- requests ------------------------------------------------------------------------------------------


def head_of(data: bytes) -> list[str]:
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")


def test_post_request_bytes() -> None:
    p = prepare("POST", "http://orders.example:8080/v1/orders?x=1", {"Authorization": "Bearer k"}, b'{"a":1}',
                call_id="abc@pbx")
    assert (p.host, p.port, p.tls) == ("orders.example", 8080, False)
    lines = head_of(p.data)
    assert lines[0] == "POST /v1/orders?x=1 HTTP/1.1"
    assert "Host: orders.example:8080" in lines
    assert "Content-Type: application/json" in lines and "Content-Length: 7" in lines
    assert "Authorization: Bearer k" in lines and "X-Sipagent-Call-Id: abc@pbx" in lines
    assert "Connection: close" in lines
    assert p.data.endswith(b'\r\n\r\n{"a":1}')


def test_get_request_has_no_body_and_https_defaults() -> None:
    p = prepare("GET", "https://[::1]/lookup", {"content-type": "text/plain"}, None, call_id="c")
    assert (p.host, p.port, p.tls) == ("::1", 443, True)
    lines = head_of(p.data)
    assert lines[0] == "GET /lookup HTTP/1.1" and "Host: [::1]" in lines
    assert not any(line.lower().startswith("content-length") for line in lines)
    assert "content-type: text/plain" in lines  # a configured header replaces our default of that name
    assert p.data.endswith(b"\r\n\r\n")


def test_an_international_host_name_goes_out_as_a_labels() -> None:
    p = prepare("GET", "http://bücher.example/x", {}, None)
    assert p.host == "xn--bcher-kva.example" and "Host: xn--bcher-kva.example" in head_of(p.data)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\x00b", "a\x1bb"])
def test_control_characters_in_a_header_value_are_refused(value: str) -> None:
    with pytest.raises(RequestRefused, match="control character"):
        prepare("POST", "http://h/", {"X-Token": value}, b"{}")
    with pytest.raises(RequestRefused, match="control character"):
        prepare("POST", "http://h/", {}, b"{}", call_id=value)  # the SIP Call-ID comes from outside


@pytest.mark.parametrize(
    ("url", "headers", "match"),
    [
        ("ftp://h/", {}, "http:// or https://"),
        ("http:///path", {}, "with a host"),
        ("http://user:pw@h/", {}, "credentials"),
        ("http://h:99999/", {}, "port"),
        ("http://h/a b", {}, "spaces"),
        ("http://h/é", {}, "non-ASCII"),
        ("http://h/", {"Bad Name": "x"}, "field name"),
        ("http://h/", {"Content-Length": "0"}, "set by sipagent"),
        ("http://h/", {"Host": "other"}, "set by sipagent"),
        ("http://h/", {"Transfer-Encoding": "chunked"}, "set by sipagent"),
        ("http://h/", {"X": "ü€"}, "Latin-1"),
    ],
)
def test_unsafe_requests_are_refused(url: str, headers: dict[str, str], match: str) -> None:
    with pytest.raises(RequestRefused, match=match):
        prepare("POST", url, headers, b"{}")


# --- responses -----------------------------------------------------------------------------------------


def parse(*pieces: bytes, eof: bool = False) -> Response | None:
    parser = ResponseParser()
    for piece in pieces:
        parser.feed(piece)
    if eof:
        parser.feed_eof()
    return parser.response


def test_content_length_body_byte_by_byte() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}trailing junk"
    response = parse(*(data[i : i + 1] for i in range(len(data))))
    assert response is not None and response.status == 200 and response.reason == "OK"
    assert response.body == b'{"a":1}' and response.header("content-type") == "application/json"


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n")
    response = parse(data)
    assert response is not None and response.body == b'{"a":1}'


def test_read_to_close_needs_the_close() -> None:
    assert parse(b"HTTP/1.0 200 OK\r\n\r\nhello") is None
    response = parse(b"HTTP/1.0 200 OK\r\n\r\nhel", b"lo", eof=True)
    assert response is not None and response.body == b"hello"


def test_interim_responses_are_skipped_and_204_has_no_body() -> None:
    response = parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert response is not None and response.status == 204 and response.body == b""


def test_bare_lf_lines_are_read() -> None:
    response = parse(b"HTTP/1.1 503 Busy\nContent-Length: 2\n\nno")
    assert response is not None and response.status == 503 and response.body == b"no"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n", "Content-Length"),  # "²".isdigit()
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n", "longer than its size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\n0\r\n\r\n", "longer than its size"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched"),
    ],
)
def test_malformed_responses(data: bytes, match: str) -> None:
    with pytest.raises(BadResponse, match=match):
        parse(data)


def test_a_response_cut_short_is_an_error() -> None:
    with pytest.raises(BadResponse, match="closed before"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", eof=True)
    with pytest.raises(BadResponse, match="closed before"):
        parse(b"HTTP/1.1 200 OK\r\nContent-Le", eof=True)


def test_caps_on_head_and_body() -> None:
    with pytest.raises(ResponseTooLarge, match="headers"):  # a head that never ends
        parse(b"HTTP/1.1 200 OK\r\n", *([b"X-Pad: " + b"a" * 1000 + b"\r\n"] * (MAX_HEAD_BYTES // 1000 + 1)))
    with pytest.raises(ResponseTooLarge, match="header fields"):
        parse(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"\r\n")
    with pytest.raises(ResponseTooLarge):  # refused from the header, before any of the body arrives
        parse(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode())
    big_chunk = f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{MAX_BODY_BYTES + 1:x}\r\n".encode()
    with pytest.raises(ResponseTooLarge):
        parse(big_chunk)
    with pytest.raises(ResponseTooLarge):  # many chunks adding up
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", *([chunk] * 17))
    with pytest.raises(ResponseTooLarge):  # read to the close
        parse(b"HTTP/1.1 200 OK\r\n\r\n", *([b"x" * 65536] * 17))
    with pytest.raises(ResponseTooLarge, match="chunk-size line"):
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 2000)
    with pytest.raises(ResponseTooLarge, match="chunk-size line"):  # the same, arriving whole
        parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;" + b"e" * 2000 + b"\r\nx\r\n0\r\n\r\n")
    at_cap = parse(f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_BODY_BYTES}\r\n\r\n".encode(), b"x" * MAX_BODY_BYTES)
    assert at_cap is not None and len(at_cap.body) == MAX_BODY_BYTES


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\nhello world",
]


@given(st.sampled_from(RESPONSES), st.lists(st.integers(0, 200), max_size=8))
def test_any_split_of_the_input_gives_the_same_response(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    response = parse(*pieces)
    assert response is not None and response.body == b"hello world"
