"""The peer handshake's proofs of the shared secret: what each one binds."""

from __future__ import annotations

import pytest

from coord.peer_handshake import (
    AUTH_SECRET,
    HandshakeRefusedError,
    PeerAuth,
    check_answer,
    check_proof,
    encode_hello,
    new_nonce,
    proof_of_secret,
)
from coord.protocol import ProtocolError, decode_body

SECRET = b"0123456789abcdef0123456789abcdef"
ENSEMBLE = b"e" * 32


def proof(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "secret": SECRET,
        "role": "accept",
        "ensemble_id": ENSEMBLE,
        "dialer": 1,
        "acceptor": 2,
        "dialer_nonce": b"d" * 16,
        "acceptor_nonce": b"a" * 16,
    }
    fields.update(changes)
    secret, role = fields.pop("secret"), fields.pop("role")
    return proof_of_secret(secret, role, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"secret": SECRET[:-1] + b"!"},
        {"role": "dial"},
        {"ensemble_id": b"f" * 32},
        {"dialer": 3},
        {"acceptor": 3},
        {"dialer": 2, "acceptor": 1},
        {"dialer_nonce": b"x" * 16},
        {"acceptor_nonce": b"x" * 16},
    ],
    ids=str,
)
def test_a_proof_binds_every_part_of_the_handshake(change: dict[str, object]) -> None:
    assert proof(**change) != proof()
    assert len(proof()) == 32 and proof() == proof()


def answer(**changes: object) -> object:
    body = encode_hello(2, ENSEMBLE, auth=AUTH_SECRET, nonce=b"a" * 16, proof=proof())
    item = decode_body(body[4:])
    item.update(changes)
    return item


def test_the_dialer_checks_the_acceptors_proof() -> None:
    auth = PeerAuth.with_secret(SECRET)
    nonce = b"d" * 16
    assert check_answer(answer(), target=2, own_id=1, ensemble_id=ENSEMBLE, auth=auth, nonce=nonce).nonce == b"a" * 16
    with pytest.raises(HandshakeRefusedError, match="does not hold the ensemble's secret"):
        check_answer(answer(proof=proof(role="dial")), target=2, own_id=1, ensemble_id=ENSEMBLE, auth=auth, nonce=nonce)
    with pytest.raises(HandshakeRefusedError, match="does not hold"):
        check_answer(answer(), target=2, own_id=1, ensemble_id=ENSEMBLE, auth=auth, nonce=new_nonce())
    with pytest.raises(HandshakeRefusedError, match="does not hold"):
        missing = answer()
        del missing["proof"]  # type: ignore[attr-defined]
        check_answer(missing, target=2, own_id=1, ensemble_id=ENSEMBLE, auth=auth, nonce=nonce)
    with pytest.raises(ProtocolError, match="carries no proof"):
        check_answer(answer(auth="none"), target=2, own_id=1, ensemble_id=ENSEMBLE, auth=PeerAuth(), nonce=nonce)


@pytest.mark.parametrize(
    ("item", "error"),
    [
        (None, "closed before proving"),
        ({"coord_peer_proof": b"x" * 32}, "does not hold the ensemble's secret"),
        ({"coord_peer_proof": "text"}, "not a peer proof"),
        ({"proof": b"x" * 32}, "not a peer proof"),
    ],
)
def test_the_acceptor_checks_the_dialers_proof(item: object, error: str) -> None:
    expected = proof(role="dial")
    check_proof({"coord_peer_proof": expected}, expected, source=1)
    with pytest.raises((HandshakeRefusedError, ProtocolError), match=error):
        check_proof(item, expected, source=1)


def test_nonces_are_fresh() -> None:
    assert len({new_nonce() for _ in range(100)}) == 100
