"""Response cleaning as plain functions: every spelling of a secret is overwritten in
place, a secret split across chunks at any point is caught, nothing but a possible start
of a secret is held back, and lengths never change."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from bureau.proxy.scrub import BodyScrubber, Needles, is_text, spellings

SECRET = b"canary/tok+en=&<x>'\"9f3a"
TOKEN = b"eyJhbGciOi.canary-minted-access-token.c2ln"


def _stream(needles: Needles, chunks: list[bytes]) -> bytes:
    scrubber = BodyScrubber(needles)
    return b"".join(scrubber.feed(c) for c in chunks) + scrubber.finish()


@pytest.mark.parametrize(
    "spelt",
    [
        SECRET,
        json.dumps(SECRET.decode())[1:-1].encode(),
        json.dumps(SECRET.decode())[1:-1].replace("/", "\\/").encode(),
        quote(SECRET, safe="").encode(),
        quote_plus(SECRET, safe="").encode(),
        b"canary/tok+en=&amp;&lt;x&gt;&apos;&quot;9f3a",
        base64.b64encode(SECRET),
        base64.urlsafe_b64encode(SECRET).rstrip(b"="),
    ],
)
def test_every_spelling_is_overwritten_in_place(spelt: bytes) -> None:
    needles = Needles([SECRET])
    body = b'{"error": "bad token ' + spelt + b'", "hint": "retry"}'
    cleaned = _stream(needles, [body])
    assert cleaned == body.replace(spelt, b"*" * len(spelt))
    assert len(cleaned) == len(body)


def test_a_secret_split_at_every_point_across_chunks_is_caught() -> None:
    needles = Needles([SECRET, TOKEN])
    body = b"prefix " + TOKEN + b" middle " + SECRET + b" end"
    expected = body.replace(TOKEN, b"*" * len(TOKEN)).replace(SECRET, b"*" * len(SECRET))
    for cut in range(1, len(body)):
        assert _stream(needles, [body[:cut], body[cut:]]) == expected, cut
    for a in range(1, len(body), 7):
        for b in range(a + 1, len(body), 5):
            assert _stream(needles, [body[:a], body[a:b], body[b:]]) == expected, (a, b)
    assert _stream(needles, [bytes([c]) for c in body]) == expected


def test_only_a_possible_start_of_a_secret_is_held_back() -> None:
    scrubber = BodyScrubber(Needles([TOKEN]))
    event = b'data: {"delta": "hello"}\n\n'
    assert scrubber.feed(event) == event  # an event goes out at once
    assert scrubber.feed(b"data: eyJhbG") == b"data: "  # this may be the token
    assert scrubber.feed(b"X rest\n\n") == b"eyJhbGX rest\n\n"  # it was not
    assert scrubber.feed(TOKEN[:10]) == b""
    assert scrubber.finish() == TOKEN[:10]  # the end of the body releases what is held


def test_a_body_full_of_the_rarest_byte_is_still_searched_whole() -> None:
    """Each needle is looked for by its rarest byte; a body where that byte is common
    (a hundred near misses) switches to a plain search, and still finds it."""
    secret = b"Q-secret-value"
    needles = Needles([secret])
    body = b"Q-secret-valu " * 100 + secret + b" Q"
    assert needles.clean(body) == body.replace(secret, b"*" * len(secret))


def test_overlapping_secrets_are_covered_whole() -> None:
    first, second = b"abcdef-ghijkl", b"ghijkl-mnopqr"
    needles = Needles([first, second])
    assert needles.clean(b"<abcdef-ghijkl-mnopqr>") == b"<" + b"*" * 20 + b">"


def test_short_secrets_are_not_searched_for_and_nothing_is_not_a_needle() -> None:
    assert spellings(b"abc") == set()
    assert not Needles([b"abc"])
    assert Needles([]).clean(b"anything") == b"anything"
    assert _stream(Needles([]), [b"a", b"b"]) == b"ab"


def test_header_values() -> None:
    needles = Needles([TOKEN])
    challenge = b'Bearer error="invalid_token", token="' + TOKEN + b'"'
    assert needles.clean(challenge) == challenge.replace(TOKEN, b"*" * len(TOKEN))


@pytest.mark.parametrize(
    ("content_type", "text"),
    [
        (b"text/plain; charset=utf-8", True),
        (b"text/event-stream", True),
        (b"application/json", True),
        (b"Application/JSON", True),
        (b"application/vnd.github+json", True),
        (b"application/problem+json", True),
        (b"application/atom+xml", True),
        (b"application/x-www-form-urlencoded", True),
        (b"", True),
        (b"application/octet-stream", False),
        (b"image/png", False),
        (b"application/zip", False),
    ],
)
def test_which_bodies_are_text(content_type: bytes, text: bool) -> None:
    assert is_text(content_type) is text


def test_nothing_secret_in_repr() -> None:
    needles = Needles([TOKEN])
    scrubber = BodyScrubber(needles)
    scrubber.feed(b"x" + TOKEN[:8])
    for text in (repr(needles), repr(scrubber), str(needles), str(scrubber)):
        assert b"canary" not in text.encode()
        assert TOKEN[:8].decode() not in text
