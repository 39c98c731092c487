"""How far bureau-proxy lets either side's bytes go: a head's size while it arrives, the
transfer codings a message may use, and the one response an upstream owes per request.
Pure: no sockets, no clock.

Heads are bounded as they arrive, not once complete. httptools gathers a header's name and
value across reads before it calls on_header, re-copying what it has on every read, so a
header that never ends would be buffered without limit and at a quadratic cost. Besides
the exact count on_url, on_status and on_header keep, a connection counts every read that
began and ended inside the same head (HeadMeter); either count past MAX_HEAD_BYTES ends the
exchange. The read a head begins in is not counted (it may hold earlier messages too), so a
head costs at most the limit plus a read or two before it is cut.
"""

from __future__ import annotations

from bureau.proxy.http_rules import error_response

MAX_HEAD_BYTES = 64 * 1024


class Refused(Exception):
    """Raised from a parser callback to stop the parser; the connection has noted why."""


class HeadMeter:
    """Per connection: which head the parser is in, and the bytes of whole reads inside it.
    The connection calls started() from on_message_begin and ended() from
    on_headers_complete, and brackets each feed_data with before() and after(). (The
    exact count of parsed parts stays inline in the callbacks: they run per header.)"""

    __slots__ = ("heads", "in_head", "reads")

    def __init__(self) -> None:
        self.heads = 0
        self.in_head = False
        self.reads = 0

    def started(self) -> None:
        self.heads += 1
        self.in_head = True
        self.reads = 0

    def ended(self) -> None:
        self.in_head = False

    def before(self) -> int:
        """A token for after(): which head, if any, the parser is in before this read."""
        return self.heads if self.in_head else -1

    def after(self, token: int, size: int) -> bool:
        """True once the head is past the limit: this read of ``size`` bytes began and
        ended inside the same head, so all of it is head."""
        if self.in_head and self.heads == token:
            self.reads += size
            return self.reads > MAX_HEAD_BYTES
        return False


def refused_request(
    method: bytes, coding: bytes | None, *, upgrade: bool, keep_alive: bool
) -> tuple[bytes, bool] | None:
    """The answer, and whether the connection closes after it, for a request the proxy
    refuses whatever its target; None for one it may forward. Decided before a route is
    looked at, so nothing has been injected yet."""
    if upgrade:
        return error_response(501, "CONNECT and Upgrade are not supported", keep_alive=False), True
    if method == b"TRACE":
        # An upstream echoes a TRACE back, injected credentials and all.
        return error_response(405, "TRACE is not supported", keep_alive=keep_alive), False
    if coding is not None:
        refusal = request_coding(coding)
        if refusal is not None:
            return error_response(*refusal, keep_alive=False), True
    return None


def request_coding(value: bytes) -> tuple[int, str] | None:
    """A request's Transfer-Encoding (its header lines joined by commas): None when it is
    exactly ``chunked``, the one coding the proxy frames itself. When chunked is not the
    last coding, or comes twice, the body's end is unknowable: 400. Any other coding would
    be lost in re-framing (the proxy decodes the chunks and sends only chunked upstream):
    501 rather than a body that changes meaning on the way."""
    codings = [c.strip() for c in value.lower().split(b",")]
    if codings == [b"chunked"]:
        return None
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        return 400, "malformed HTTP request: bad Transfer-Encoding"
    return 501, "transfer codings other than chunked are not supported"


def only_chunked(value: bytes) -> bool:
    """A response's Transfer-Encoding the proxy can re-frame without losing a coding."""
    return value.strip().lower() == b"chunked"


def response_framing(
    status: int, head_only: bool, length: bytes | None, chunked: bool, client_11: bool
) -> tuple[bytes, bool, bool, bool]:
    """For a final response: the framing line the proxy writes, whether the upstream's
    body ends with its connection, whether the proxy chunks the body for the client, and
    whether the client's body ends with the client's connection (an HTTP/1.0 client
    without a length). A response to HEAD, a 204 and a 304 have no body whatever the
    upstream sends; a HEAD answer keeps the length the upstream announced."""
    if head_only or status in (204, 304):
        if head_only and length is not None:
            return b"Content-Length: " + length + b"\r\n", False, False, False
        return b"", False, False, False
    if length is not None and not chunked:
        return b"Content-Length: " + length + b"\r\n", False, False, False
    if client_11:
        return b"Transfer-Encoding: chunked\r\n", not chunked, True, False
    return b"", not chunked, False, True
