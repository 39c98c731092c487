"""nix.conf trust for the fleet's binary cache: its URL among the substituters and its
public key among the trusted keys. Reading the cache needs nothing else (the seed's
"key insight"). Pure; script/configure-substituter applies the same rule in bash before
bureau is installed.

A setting is ``name = value value ...``; ``extra-X`` adds to ``X``. The rule: one
``extra-substituters`` and one ``extra-trusted-public-keys`` line, each naming the value
once; other lines are kept as they are.
"""

from __future__ import annotations

SUBSTITUTERS = "extra-substituters"
TRUSTED_KEYS = "extra-trusted-public-keys"
_SETTINGS = {
    SUBSTITUTERS: ("substituters", SUBSTITUTERS),
    TRUSTED_KEYS: ("trusted-public-keys", TRUSTED_KEYS),
}


def _values(text: str, names: tuple[str, ...]) -> list[str]:
    found = []
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() in names:
            found += value.split("#", 1)[0].split()
    return found


def trusts(text: str, url: str, public_key: str) -> bool:
    return url in _values(text, _SETTINGS[SUBSTITUTERS]) and public_key in _values(
        text, _SETTINGS[TRUSTED_KEYS]
    )


def _with_value(lines: list[str], setting: str, value: str) -> list[str]:
    if value in _values("\n".join(lines), _SETTINGS[setting]):
        return lines
    for index, line in enumerate(lines):
        body, hash_sign, comment = line.partition("#")
        name, sep, current = body.partition("=")
        if sep and name.strip() == setting:
            kept = f" {hash_sign}{comment}" if hash_sign else ""
            lines[index] = f"{setting} = {' '.join([*current.split(), value])}{kept}"
            return lines
    return [*lines, f"{setting} = {value}"]


def with_trust(text: str, url: str, public_key: str) -> str:
    """nix.conf text that trusts the cache; unchanged when it already does."""
    lines = text.splitlines()
    lines = _with_value(lines, SUBSTITUTERS, url)
    lines = _with_value(lines, TRUSTED_KEYS, public_key)
    result = "\n".join(lines) + "\n"
    return text if result.strip() == text.strip() else result
