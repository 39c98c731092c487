"""Operator signatures (wire/signing.py) and the trusted key set (wire/operator_keys.py)."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json

from bureau.errors import InputError
from bureau.secret import Secret
from bureau.wire import signing
from bureau.wire.operator_keys import Statement, TrustedKeys, read_statements, statement
from bureau.wire.signing import OperatorKey, PublicKey, Unsigned, Unverified, sign, verify

KIND = "m.bureau.credentials"
TARGET = "@bureau/fleet/prod/agent/alpha:example.org"
CONTENT: dict[str, Any] = {"version": 1, "principal": TARGET, "keys": ["TOKEN"], "n": 5}


def trusted(*keys: OperatorKey) -> dict[str, PublicKey]:
    return {k.key_id: k.public for k in keys}


def test_signed_content_verifies_by_its_key() -> None:
    key = OperatorKey.generate()
    signed = sign(CONTENT, KIND, TARGET, key)
    assert signed["signatures"][signing.ENTITY].keys() == {key.key_id}
    assert verify(signed, KIND, TARGET, trusted(key), "event") == key.key_id
    # The content is the author's, signatures aside.
    assert signing.unsigned_content(signed) == CONTENT


def test_matrix_signing_over_type_target_and_content() -> None:
    """Any Matrix implementation checks it: signedjson over {type, target, content}."""
    key = OperatorKey.generate()
    signed = sign(CONTENT, KIND, TARGET, key)
    version = key.key_id.split(":")[1]
    verify_key = decode_verify_key_bytes(key.key_id, key.public.raw)
    wrapped = {
        "type": KIND,
        "target": TARGET,
        "content": CONTENT,
        "signatures": signed["signatures"],
    }
    verify_signed_json(wrapped, signing.ENTITY, verify_key)
    assert version == signing.key_version(key.public.raw)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda c: c.pop("signatures"), "absent"),
        (lambda c: c.__setitem__("n", 6), "does not match"),
        (lambda c: c.__setitem__("extra", True), "does not match"),
        (lambda c: c.__setitem__("signatures", {"other": {}}), "expected"),
        (lambda c: c.__setitem__("signatures", "x"), "expected"),
    ],
)
def test_changed_or_unsigned_content_is_refused(change: Any, reason: str) -> None:
    key = OperatorKey.generate()
    signed = copy.deepcopy(sign(CONTENT, KIND, TARGET, key))
    change(signed)
    with pytest.raises(Unverified, match=reason):
        verify(signed, KIND, TARGET, trusted(key), "event")


def test_unsigned_is_its_own_refusal() -> None:
    with pytest.raises(Unsigned):
        verify(CONTENT, KIND, TARGET, {}, "event")


def test_signature_binds_type_and_target() -> None:
    key = OperatorKey.generate()
    signed = sign(CONTENT, KIND, TARGET, key)
    with pytest.raises(Unverified, match="does not match"):
        verify(signed, KIND, TARGET.replace("alpha", "beta"), trusted(key), "event")
    with pytest.raises(Unverified, match="does not match"):
        verify(signed, "m.bureau.template", TARGET, trusted(key), "event")


def test_another_key_is_not_trusted() -> None:
    mine, theirs = OperatorKey.generate(), OperatorKey.generate()
    signed = sign(CONTENT, KIND, TARGET, theirs)
    with pytest.raises(Unverified, match="no operator key this machine trusts"):
        verify(signed, KIND, TARGET, trusted(mine), "event")
    # A signature claimed under a trusted key's ID but made by another key.
    forged = {**signed, "signatures": {signing.ENTITY: {mine.key_id: "A" * 86}}}
    with pytest.raises(Unverified, match="does not match"):
        verify(forged, KIND, TARGET, trusted(mine), "event")


def test_signing_again_drops_earlier_signatures() -> None:
    one, two = OperatorKey.generate(), OperatorKey.generate()
    again = sign(sign(CONTENT, KIND, TARGET, one), KIND, TARGET, two)
    assert again["signatures"][signing.ENTITY].keys() == {two.key_id}


def test_private_key_round_trips_and_never_shows() -> None:
    key = OperatorKey.generate()
    text = key.reveal()
    assert text.reveal().startswith(f"ed25519 {key.key_id.split(':')[1]} ")
    again = OperatorKey.from_text(text, "file")
    assert again.public == key.public
    seed = text.reveal().split()[2]
    assert seed not in repr(key)
    assert seed not in str(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(InputError, match="expected ed25519"):
        OperatorKey.from_text(Secret("rsa 1 abc"), "file")


def test_public_key_text_round_trip() -> None:
    key = OperatorKey.generate().public
    assert PublicKey.from_text(key.to_text(), "f") == key
    with pytest.raises(InputError, match="key ID"):
        PublicKey.parse("rsa:1", key.base64, "f")
    with pytest.raises(InputError, match="32-byte"):
        PublicKey.parse(key.key_id, "abc", "f")


def test_rotation_and_removal() -> None:
    old, new, third = OperatorKey.generate(), OperatorKey.generate(), OperatorKey.generate()
    pinned = TrustedKeys(trusted(old))
    add = statement("add", new.public, old)
    revoke = statement("revoke", old.public, new)
    # In any order: the revocation is signed by a key the other statement adds.
    after, changes = pinned.apply(read_statements({"statements": [revoke, add]}))
    assert set(after.keys) == {new.key_id}
    assert set(after.revoked) == {old.key_id}
    assert len(changes) == 2
    # The removed key's signatures are refused, saying so; it cannot add keys any more.
    signed = sign(CONTENT, KIND, TARGET, old)
    with pytest.raises(Unverified, match="removed"):
        verify(signed, KIND, TARGET, after.keys, "event", revoked=after.revoked)
    late = statement("add", third.public, old)
    assert after.apply([Statement.from_json(late, "s")])[0] == after
    # Nor is it trusted again, whoever adds it back.
    back = statement("add", old.public, new)
    assert old.key_id not in after.apply([Statement.from_json(back, "s")])[0].keys
    with pytest.raises(InputError, match="revoked"):
        after.with_key(old.public)
    # The file form round-trips.
    assert TrustedKeys.from_json(after.to_json()) == after


def test_statements_signed_by_untrusted_keys_change_nothing() -> None:
    mine, stranger = OperatorKey.generate(), OperatorKey.generate()
    pinned = TrustedKeys(trusted(mine))
    forged = [
        statement("add", stranger.public, stranger),
        statement("revoke", mine.public, stranger),
        {
            **statement("add", stranger.public, mine),
            "public_key": OperatorKey.generate().public.base64,
        },
    ]
    after, changes = pinned.apply(read_statements({"statements": forged}))
    assert after == pinned
    assert changes == []


def test_the_last_key_is_not_revoked() -> None:
    key = OperatorKey.generate()
    pinned = TrustedKeys(trusted(key))
    after, changes = pinned.apply([Statement.from_json(statement("revoke", key.public, key), "s")])
    assert after == pinned
    assert "last" in changes[0]
