"""bureau.wire.credentials: m.bureau.credentials and the routes it carries."""

from __future__ import annotations

from bureau.wire.credentials import has_control_character


def test_control_characters_in_credential_values() -> None:
    assert not has_control_character("Bearer abc\tdef ~")
    for bad in ("a\rb", "a\nb", "a\0b", "a\x0bb", "a\x1fb", "a\x7fb"):
        assert has_control_character(bad), bad
