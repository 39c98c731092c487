"""How far bureau-proxy lets either side's bytes go: a head's size while it arrives, the
trailers after a chunked body, how much a client may have waiting, the transfer codings a
message may use, and the one response an upstream owes per request. Pure: no sockets, no
clock.

Heads are bounded as they arrive, not once complete. httptools gathers a header's name and
value across reads before it calls on_header, re-copying what it has on every read, so a
header that never ends would be buffered without limit and at a quadratic cost. Besides
the exact count on_url, on_status and on_header keep, a connection counts every read that
began and ended inside the same head (HeadMeter); either count past MAX_HEAD_BYTES ends the
exchange. The read a head begins in is not counted (it may hold earlier messages too), so a
head costs at most the limit plus a read or two before it is cut.

Trailers, the header lines after a chunked body's last chunk, are gathered by httptools the
same way and reported through the same on_header, after on_headers_complete. The proxy never
forwards them (it ends a chunked body with a bare last chunk, both ways) but bounds them as
it bounds a head: both counts restart at each chunk's size line, and a read that begins
after a size line and ends with no body byte parsed since is inside trailers (a chunk's data
reaches on_body in the read it arrives in). So trailers too cost at most the limit plus a
read or two. A client's are a 431 and a close; an upstream's fail the exchange and drop that
upstream connection, and the client's connection is cut (the response head and part of the
body are already relayed).

A client is read from only while what it sends has somewhere to go: not while its answers
back up (its transport's write buffer is past the high-water mark; the upstream answering is
paused too), while more than MAX_PIPELINED of its requests wait, while more than
MAX_BUFFERED bytes of request body wait for an upstream connection, or while the upstream
connection its body streams to is full. So a client that pipelines requests and never reads
the answers costs a bounded amount. The check follows each read (httptools parses all of
it), so the bound may be passed by one read's worth of requests.
"""

from __future__ import annotations

from bureau.proxy.http_rules import error_response

MAX_HEAD_BYTES = 64 * 1024
# A client's requests waiting for their turn, and the request body bytes waiting for an
# upstream connection, past which the proxy stops reading from that client.
MAX_PIPELINED = 64
MAX_BUFFERED = 1 << 20


class Refused(Exception):
    """Raised from a parser callback to stop the parser; the connection has noted why."""


class HeadMeter:
    """Per connection: which head or trailers the parser may be in, and the bytes of whole
    reads inside them. The connection calls started() from on_message_begin and chunk()
    from on_chunk_header (a chunk's data follows, or after the last chunk its trailers),
    clears ``inside`` from on_headers_complete and on_body, and brackets each feed_data with
    before() and after(). (The exact count of parsed parts stays inline in the callbacks:
    they run per header.)"""

    __slots__ = ("heads", "inside", "reads", "trailers")

    def __init__(self) -> None:
        self.heads = 0
        self.inside = False
        self.reads = 0
        self.trailers = False

    def started(self) -> None:
        self.heads += 1
        self.inside = True
        self.reads = 0
        self.trailers = False

    def chunk(self) -> None:
        self.heads += 1
        self.inside = True
        self.reads = 0
        self.trailers = True

    def before(self) -> int:
        """A token for after(): which head, if any, the parser is in before this read."""
        return self.heads if self.inside else -1

    def after(self, token: int, size: int) -> bool:
        """True once the head is past the limit: this read of ``size`` bytes began and
        ended inside the same head or trailers, so all of it is head or trailers."""
        if self.inside and self.heads == token:
            self.reads += size
            return self.reads > MAX_HEAD_BYTES
        return False

    def what(self) -> str:
        """What was too large, for the refusal."""
        return "trailers" if self.trailers else "head"


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
