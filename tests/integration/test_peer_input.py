"""Malformed input on the peer port: a process posing as a follower (or a leader).

The finding this guards: ``AppToLeader(payload=cbor(["s", b"pw", inf]))`` from a
process posing as a follower raised OverflowError in ``Pipeline.from_follower`` and
the leader exited. Now application messages between leader and followers are parsed
strictly: a malformed one drops that peer's links (logged) and nothing else, and a
malformed ZAB message closes the link it came on.

The impostor stops a real follower and claims its id with a valid peer hello (same
ensemble digest). It joins the leader the way a follower does, FOLLOWERINFO then
ACKEPOCH, so the leader counts it as syncing and hands its application messages to
the pipeline (a well-formed forwarded create from it does create a node: the control
case), then sends the malformed message. The leader's messages to the impostor are
dropped (nothing listens on the stopped follower's peer port), which ZAB tolerates.
Everything goes in one write, before the leader can answer anything: no race.

Real server processes throughout, so "the leader stays up" means its process does.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import cbor2
import trio

import client
from coord import protocol
from coord.config import load_config
from coord.peer_handshake import PeerAuth, encode_hello, encode_proof, new_nonce, proof_of_secret, read_hello
from coord.protocol import HEADER, CreateRequest, GetDataRequest
from coord.testing import Ensemble, open_ensemble
from coord.transport import peer_auth
from coord.zab.codec import encode_message
from coord.zab.messages import AckEpoch, AppToFollower, AppToLeader, FollowerInfo
from tests.integration.hostile import TCP_ESTABLISHED, tcp_state

CLOSE_DEADLINE_S = 5.0


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def forwarded_create(path: str) -> list[Any]:
    return ["w", 0, 1, protocol.encode_request(1, CreateRequest(path=path, data=b"forged"))]


_CREATE_ITEM = protocol.encode_request(7, CreateRequest(path="/never"))

BAD_APP_PAYLOADS: list[tuple[str, bytes]] = [
    ("s-inf-timeout", cbor2.dumps(["s", b"pw", float("inf")])),  # the original finding
    ("s-nan-timeout", cbor2.dumps(["s", b"pw", float("nan")])),
    ("s-float-timeout", cbor2.dumps(["s", b"pw", 5000.0])),
    ("s-huge-timeout", cbor2.dumps(["s", b"pw", 2**70])),
    ("s-negative-timeout", cbor2.dumps(["s", b"pw", -1])),
    ("s-text-password", cbor2.dumps(["s", "pw", 5000])),
    ("s-long-password", cbor2.dumps(["s", b"p" * 65, 5000])),
    ("s-bool-timeout", cbor2.dumps(["s", b"pw", True])),
    ("w-junk-request", cbor2.dumps(["w", 1, 2, "junk"])),
    ("w-read-request", cbor2.dumps(["w", 1, 2, protocol.encode_request(2, GetDataRequest(path="/"))])),
    ("w-short-request", cbor2.dumps(["w", 1, 2, [2]])),
    ("w-negative-session", cbor2.dumps(["w", -1, 2, _CREATE_ITEM])),
    ("w-huge-session", cbor2.dumps(["w", 2**64, 2, _CREATE_ITEM])),
    ("w-huge-xid", cbor2.dumps(["w", 1, 2**40, _CREATE_ITEM])),
    ("w-float-xid", cbor2.dumps(["w", 1, 2.5, _CREATE_ITEM])),
    ("w-missing-field", cbor2.dumps(["w", 1, _CREATE_ITEM])),
    ("t-huge-session", cbor2.dumps(["t", [2**70]])),
    ("t-negative-session", cbor2.dumps(["t", [-1]])),
    ("t-float-session", cbor2.dumps(["t", [1.5]])),
    ("t-not-a-list", cbor2.dumps(["t", "sessions"])),
    ("t-nested", cbor2.dumps(["t", [[[[[[[[[[1]]]]]]]]]]])),
    ("y-short", cbor2.dumps(["y", 1])),
    ("y-nulls", cbor2.dumps(["y", None, None])),
    ("y-inf-xid", cbor2.dumps(["y", 1, float("-inf")])),
    ("unknown-kind", cbor2.dumps(["q", 1])),
    ("kind-not-text", cbor2.dumps([115, b"pw", 5000])),
    ("empty-array", cbor2.dumps([])),
    ("map", cbor2.dumps({"s": [b"pw", 5000]})),
    ("bare-float", cbor2.dumps(float("inf"))),
    ("bignum-tag", cbor2.dumps(["s", b"pw", cbor2.CBORTag(2, b"\x01" * 12)])),
    ("trailing-bytes", cbor2.dumps(["t", [1]]) + b"\x00"),
    ("not-cbor", b"\xff\xfe\xfd not cbor at all"),
    ("truncated-cbor", cbor2.dumps(["s", b"pw", 5000])[:-2]),
    ("empty", b""),
]

BAD_ZAB_BODIES: list[tuple[str, bytes]] = [
    ("not-cbor", b"\xff\xfe\xfd"),
    ("empty-body", b""),
    ("unknown-type", cbor2.dumps([99, 1])),
    ("not-an-array", cbor2.dumps({"type": 18})),
    ("app-epoch-text", cbor2.dumps([18, "1", b""])),
    ("app-payload-text", cbor2.dumps([18, 1, "payload"])),
    ("app-epoch-inf", cbor2.dumps([18, float("inf"), b""])),
    ("app-extra-field", cbor2.dumps([18, 1, b"", 0])),
    ("ack-huge-zxid", cbor2.dumps([13, 2**70])),
    ("ack-negative-zxid", cbor2.dumps([13, -1])),
    ("proposal-no-txns", cbor2.dumps([12, 1, []])),
    ("ping-ack-bool", cbor2.dumps([16, True, 1])),
    ("deep-nesting", cbor2.dumps([18, 1, [[[[[[[[b""]]]]]]]]])),
    ("tagged", cbor2.dumps([13, cbor2.CBORTag(2, b"\x01")])),
    ("trailing-bytes", cbor2.dumps([13, 1]) + b"\x00"),
]


class Impostor:
    """Connections to one server's peer port that claim another server's id (holding the
    ensemble's secret: the malformed input comes from a peer that authenticated)."""

    def __init__(
        self, address: tuple[str, int], claimed_id: int, expected_id: int, ensemble_id: bytes, auth: PeerAuth
    ) -> None:
        self.address = address
        self.claimed_id = claimed_id
        self.expected_id = expected_id
        self.ensemble_id = ensemble_id
        self.auth = auth

    async def open(self, then: bytes) -> trio.SocketStream:
        """Dial and do the handshake (hello, the answer checked, the proof), sending ``then``
        in the same write as the proof; nothing may follow the answer towards the dialer."""
        stream = await trio.open_tcp_stream(*self.address)
        try:
            nonce = new_nonce()
            await stream.send_all(encode_hello(self.claimed_id, self.ensemble_id, auth=self.auth.mode, nonce=nonce))
            with trio.fail_after(CLOSE_DEADLINE_S):
                answer, leftover = await read_hello(stream, receive_bytes=4096)
            assert answer is not None, "the server refused the impostor's hello"
            assert answer["server_id"] == self.expected_id and answer["ensemble_id"] == self.ensemble_id, answer
            assert leftover == b"", "nothing may follow the hello towards the dialer"
            proof = b""
            if self.auth.secret is not None:
                proof = encode_proof(
                    proof_of_secret(
                        self.auth.secret,
                        "dial",
                        ensemble_id=self.ensemble_id,
                        dialer=self.claimed_id,
                        acceptor=self.expected_id,
                        dialer_nonce=nonce,
                        acceptor_nonce=answer["nonce"],
                    )
                )
            await stream.send_all(proof + then)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return stream


def join_as_follower(epoch: int, *messages: Any) -> bytes:
    """FOLLOWERINFO and ACKEPOCH of a fresh attempt (the leader then syncs it and takes
    its application messages), followed by ``messages`` (ZAB messages or raw frames)."""
    handshake = random.getrandbits(62)
    out = [
        frame(encode_message(FollowerInfo(accepted_epoch=0, last_zxid=0, delivered_zxid=0, handshake=handshake))),
        frame(encode_message(AckEpoch(current_epoch=0, last_zxid=0, handshake=handshake, is_first_ack=False))),
    ]
    out += [message if isinstance(message, bytes) else frame(encode_message(message)) for message in messages]
    return b"".join(out)


async def closed_by_server(stream: trio.SocketStream) -> bool:
    """Whether the server closes the connection (EOF or reset) within the deadline;
    it sends nothing on a link after the hello, so any data is a failure too."""
    with trio.move_on_after(CLOSE_DEADLINE_S):
        try:
            data = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return True
        assert not data, f"the server sent {data!r:.60} on the impostor's link"
        return True
    return False


async def assert_serves_writes(
    ensemble: Ensemble, server_id: int, zk: client.Client, path: str, *, rejoining: bool = False
) -> None:
    """The server's process is up and a write through it succeeds. ``rejoining``: the
    server may be re-joining its leader (it drops its clients meanwhile), so a lost
    connection is retried; otherwise the first attempt must succeed."""
    process = ensemble.process(server_id)
    assert process.is_running and process.process is not None, f"server {server_id} exited:\n{process.log_tail(30)}"
    assert process.process.returncode is None and not process.exit_codes
    with trio.fail_after(20):
        while True:
            try:
                await zk.create(path, b"still serving")
                return
            except client.ConnectionLossError as error:
                if not rejoining:
                    raise AssertionError(
                        f"server {server_id} dropped a client ({error}); its log ends:\n{process.log_tail(30)}"
                    ) from None
            except client.NodeExistsError:
                return  # the lost attempt had been applied


async def stopped_follower_and_leader(ensemble: Ensemble) -> tuple[int, int, int]:
    """Stop a follower; return (leader, the stopped follower's id, the leader's epoch)."""
    leader = await ensemble.wait_for_leader(30)
    victim = min(server_id for server_id in ensemble.server_ids if server_id != leader)
    await ensemble.stop(victim)
    assert await ensemble.wait_for_leader(30) == leader
    epoch = (await ensemble.status(leader))["epoch"]
    assert type(epoch) is int and epoch > 0
    return leader, victim, epoch


def impostor_of(ensemble: Ensemble, target: int, claimed_id: int) -> Impostor:
    """An impostor of ``claimed_id`` towards ``target``, with the ensemble's digest and secret."""
    config = load_config(ensemble.process(target).config_path)
    assert config.ensemble is not None
    return Impostor(
        ensemble.process(target).peer_address,
        claimed_id,
        target,
        config.ensemble.ensemble_id,
        peer_auth(config.ensemble),
    )


async def test_malformed_app_messages_from_a_fake_follower_drop_only_its_link() -> None:
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True) as ensemble:
            leader, victim, epoch = await stopped_follower_and_leader(ensemble)
            impostor = impostor_of(ensemble, leader, victim)
            async with client.connect(ensemble.connect_string_of(leader), session_timeout=10.0) as zk:
                # The control: a well-formed application message from the impostor does
                # reach the leader's pipeline (it creates a node) and keeps the link up.
                control = await impostor.open(
                    join_as_follower(epoch, AppToLeader(epoch=epoch, payload=cbor2.dumps(forwarded_create("/forged"))))
                )
                with trio.fail_after(10):
                    while await zk.exists("/forged") is None:
                        await trio.sleep(0.02)  # polling for the forwarded create to commit
                assert tcp_state(control) == TCP_ESTABLISHED
                await control.aclose()

                not_closed = []
                for name, payload in BAD_APP_PAYLOADS:
                    link = await impostor.open(join_as_follower(epoch, AppToLeader(epoch=epoch, payload=payload)))
                    try:
                        if not await closed_by_server(link):
                            not_closed.append(name)
                    finally:
                        await link.aclose()
                    await assert_serves_writes(ensemble, leader, zk, f"/after-app-{name}")
                assert not not_closed, f"links not closed after a malformed application message: {not_closed}"
                log_text = ensemble.process(leader).log_path.read_text(errors="replace")
                malformed = log_text.count(f"malformed message from server {victim}")
                assert malformed >= len(BAD_APP_PAYLOADS), log_text[-3000:]
                assert "Traceback" not in log_text, ensemble.process(leader).log_tail(60)


async def test_malformed_zab_frames_close_only_that_link() -> None:
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True) as ensemble:
            leader, victim, epoch = await stopped_follower_and_leader(ensemble)
            impostor = impostor_of(ensemble, leader, victim)
            async with client.connect(ensemble.connect_string_of(leader), session_timeout=10.0) as zk:
                not_closed = []
                cases = [
                    *((f"{name} on a fresh link", frame(body)) for name, body in BAD_ZAB_BODIES),
                    *(
                        (f"{name} from a syncing follower", join_as_follower(epoch, frame(body)))
                        for name, body in BAD_ZAB_BODIES
                    ),
                    ("oversized frame", HEADER.pack((64 << 20) + 1) + b"x" * 1024),
                    ("huge length, then close", HEADER.pack(2**32 - 1)),
                ]
                for index, (name, data) in enumerate(cases):
                    link = await impostor.open(data)
                    try:
                        if not await closed_by_server(link):
                            not_closed.append(name)
                    finally:
                        await link.aclose()
                    await assert_serves_writes(ensemble, leader, zk, f"/after-zab-{index}")
                assert not not_closed, f"links not closed after a malformed ZAB frame: {not_closed}"
                log_text = ensemble.process(leader).log_path.read_text(errors="replace")
                # each link was closed for what it sent, not for anything else
                assert log_text.count("malformed ZAB message") >= 2 * len(BAD_ZAB_BODIES), log_text[-3000:]
                assert log_text.count("bytes is over the limit") >= 2, log_text[-3000:]
                assert "Traceback" not in log_text, ensemble.process(leader).log_tail(60)
            # The stopped follower comes back and syncs: its links were not poisoned.
            await ensemble.restart(victim)
            await ensemble.wait_for_leader(30)
            await ensemble.wait_converged(30)


async def test_malformed_app_messages_from_a_fake_leader_drop_only_its_link() -> None:
    """The other direction: an impostor claiming the leader's id sends a follower a
    malformed AppToFollower; the follower drops its links with the leader, stays up,
    and serves again once they are back (or after a new election)."""
    payloads = [
        ("y-inf", cbor2.dumps(["y", 1, float("inf")])),
        ("y-huge-session", cbor2.dumps(["y", 2**70, 1])),
        ("s-to-follower", cbor2.dumps(["s", b"pw", float("inf")])),
        ("not-cbor", b"\xff\xfe"),
    ]
    with trio.fail_after(120):
        async with open_ensemble(3, processes=True) as ensemble:
            dropped = Counter[int]()
            for name, payload in payloads:
                # (after a drop the ensemble may have elected again: look afresh)
                leader = await ensemble.wait_for_leader(30)
                follower = min(server_id for server_id in ensemble.server_ids if server_id != leader)
                epoch = (await ensemble.status(follower))["epoch"]
                impostor = impostor_of(ensemble, follower, leader)
                message = AppToFollower(epoch=epoch, commit_zxid=0, payload=payload)
                link = await impostor.open(frame(encode_message(message)))
                try:
                    assert await closed_by_server(link), f"{name}: the follower kept the impostor's link"
                finally:
                    await link.aclose()
                dropped[follower] += 1
                async with client.connect(ensemble.connect_string_of(follower), session_timeout=10.0) as zk:
                    await assert_serves_writes(ensemble, follower, zk, f"/after-leader-impostor-{name}", rejoining=True)
            for server_id, count in dropped.items():
                log_text = ensemble.process(server_id).log_path.read_text(errors="replace")
                assert log_text.count("malformed message from server") >= count, log_text[-3000:]
                assert "Traceback" not in log_text, ensemble.process(server_id).log_tail(60)
            await ensemble.wait_for_leader(30)
            await ensemble.wait_converged(30)
