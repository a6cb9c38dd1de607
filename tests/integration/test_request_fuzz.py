"""Random requests on any connection never end a server.

Hypothesis builds requests that are mostly well-shaped (real op codes with fields of
the right kind but random values: huge and negative integers, floats, NaN and
infinities, long and deep paths, large values, nested arrays, multis of random ops)
and sometimes not at all (unknown ops, random CBOR, raw bytes, bad lengths), with
random xids. They go on fresh connections (after a valid, a random or no handshake,
in one write or frame by frame) and on a connection that a session keeps across
bursts. After every example a well-behaved client must still create and read.

Against an in-process server (a fresh one per example, so a failure replays) and
against one ``coord serve`` process fed a few hundred frames.
"""

from __future__ import annotations

import math
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import coord
from coord import protocol
from coord.config import ServerConfig
from coord.protocol import ConnectRequest, CreateRequest, GetDataRequest, Op
from coord.server import open_server
from tests.integration.rawwire import RawConnection

GUARD = "/guard-7f3a9c"
"""A node made before the fuzz and read after it (no generated request names it)."""
MARK_XID = 2**31 - 1
"""The xid of the request sent after each burst: its answer (or the close) ends the burst."""
BURST_DEADLINE_S = 10.0
"""A server must answer a burst, or close the connection, within this."""

# --- values --------------------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn about ``weight`` times as often as a weight of 1."""
    # (st.one_of would drop the repeats: it draws each distinct strategy alike)
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


integers = weighted(
    (2, st.integers(min_value=-3, max_value=10)),
    (2, st.integers(min_value=-(2**31), max_value=2**31 - 1)),
    (2, st.integers(min_value=-(2**64), max_value=2**64 - 1)),  # CBOR's own integer range
    (2, st.sampled_from([2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, -(2**64)])),
    (1, st.integers(min_value=-(2**80), max_value=2**80)),  # mostly bignums: CBOR tags, refused with the frame
)
floats = st.one_of(st.floats(), st.sampled_from([math.inf, -math.inf, math.nan, 0.0, -0.0, 1e308, 5000.0]))
short_texts = st.text(max_size=12)
long_texts = st.builds(lambda piece, count: piece * count, st.text(min_size=1, max_size=3), st.integers(0, 12_000))
small_bytes = st.binary(max_size=24)
large_bytes = st.builds(
    lambda piece, count: piece * count,
    st.binary(min_size=1, max_size=4),
    st.sampled_from([1000, 65_536, 262_144, 270_000, 300_000]),  # up to ~1.2 MB: around the value and frame limits
)
scalars = st.one_of(st.none(), st.booleans(), integers, floats, short_texts, small_bytes)


def nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


any_items = weighted(
    (
        6,
        st.recursive(
            scalars,
            lambda children: st.lists(children, max_size=5) | st.dictionaries(short_texts, children, max_size=3),
            max_leaves=16,
        ),
    ),
    (1, st.builds(nested, st.integers(1, 24), scalars)),  # often deeper than the decoder allows
    (1, long_texts),
)
paths = st.one_of(
    st.sampled_from(
        ["/", "/keep", "/a", "/a/b", "/coord", "/coord/x", "/zookeeper", "", "a", "/a/", "//", "/./a", "/..", "/a\x00b"]
    ),
    st.builds(lambda parts: "/" + "/".join(parts), st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=4)),
    st.builds(lambda unit, count: unit * count, st.sampled_from(["/a", "/bb", "/x/y", "/é"]), st.integers(1, 600)),
    st.builds(lambda count: "/" + "p" * count, st.integers(4080, 4110)),  # around limits.path_bytes_max
    short_texts,
)
data_values = st.one_of(small_bytes, small_bytes, large_bytes)


def maybe_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value of the right kind, sometimes anything."""
    return weighted((4, strategy), (1, any_items))


def fields_of(op: int) -> st.SearchStrategy[list[Any]]:
    """Fields of the right count and mostly the right kinds for ``op`` (by its number)."""
    path = maybe_junk(paths)
    flag = maybe_junk(st.booleans())
    number = maybe_junk(integers)
    match op:
        case Op.CREATE:
            mode = maybe_junk(st.integers(-2, 8))
            return st.tuples(path, maybe_junk(data_values), mode, number, flag).map(list)
        case Op.DELETE | Op.CHECK:
            return st.tuples(path, number).map(list)
        case Op.EXISTS | Op.GET_DATA:
            return st.tuples(path, flag).map(list)
        case Op.SET_DATA:
            return st.tuples(path, maybe_junk(data_values), number).map(list)
        case Op.GET_CHILDREN:
            return st.tuples(path, flag, flag).map(list)
        case Op.SYNC:
            return st.tuples(path).map(list)
        case Op.ADD_WATCH | Op.REMOVE_WATCHES:
            return st.tuples(path, maybe_junk(st.integers(-1, 5))).map(list)
        case Op.SET_WATCHES:
            path_lists = maybe_junk(st.lists(paths, max_size=4))
            return st.tuples(number, path_lists, path_lists, path_lists, path_lists, path_lists).map(list)
        case Op.MULTI:
            return st.tuples(maybe_junk(st.lists(multi_ops, max_size=30))).map(list)
        case _:
            return st.just([])


def with_wrong_count(fields: st.SearchStrategy[list[Any]]) -> st.SearchStrategy[list[Any]]:
    """The fields, or one too few, or one too many."""
    return st.tuples(fields, st.sampled_from(["same"] * 6 + ["drop", "add"]), scalars).map(
        lambda t: t[0] if t[1] == "same" else (t[0][:-1] if t[1] == "drop" else [*t[0], t[2]])
    )


SUB_OPS = [int(Op.CREATE), int(Op.DELETE), int(Op.SET_DATA), int(Op.CHECK)]
deep_makepath_creates = st.builds(
    lambda depth, tag: [int(Op.CREATE), f"/deep{tag}" + "/d" * depth, b"", 0, 0, True],
    st.integers(1, 300),
    st.integers(0, 3),
)
multi_ops = st.one_of(
    st.sampled_from(SUB_OPS).flatmap(lambda op: with_wrong_count(fields_of(op)).map(lambda fields: [op, *fields])),
    deep_makepath_creates,
    st.sampled_from([int(op) for op in Op]).map(lambda op: [op]),
    any_items,
)
op_codes = weighted(
    (8, st.sampled_from([int(op) for op in Op])),
    (1, st.sampled_from([0, 6, 7, 10, 12, 15, 99, 102, 200, -1, -10, -12])),
    (1, integers),
    (1, any_items),
)
xids = weighted(
    (8, st.integers(min_value=-(2**31), max_value=2**31 - 2)),
    (8, st.integers(-5, 100)),
    (1, any_items),
)


@st.composite
def requests(draw: st.DrawFn) -> Any:
    """One request item: ``[xid, op, *fields]``, mostly well-shaped."""
    op = draw(op_codes)
    fields = draw(with_wrong_count(fields_of(op))) if type(op) is int and op in {int(o) for o in Op} else []
    if not fields and draw(st.booleans()):
        fields = draw(st.lists(any_items, max_size=6))
    return [draw(xids), op, *fields]


request_frames = requests().map(protocol.encode_frame)
garbage_frames = st.one_of(
    any_items.map(protocol.encode_frame),
    st.binary(max_size=64),  # raw bytes, framed or not
    st.builds(lambda body: protocol.HEADER.pack(len(body)) + body, st.binary(max_size=48)),
    st.builds(lambda length: protocol.HEADER.pack(length), st.integers(protocol.frame_bytes_max() + 1, 2**32 - 1)),
)
handshakes = weighted(
    (
        6,
        st.builds(
            lambda timeout: protocol.encode_frame(ConnectRequest(timeout_ms=timeout).to_wire()),
            st.integers(0, 120_000),
        ),
    ),
    (
        1,
        st.builds(
            lambda protocol_, zxid, session, password, timeout: protocol.encode_frame(
                {
                    "type": "connect",
                    "protocol": protocol_,
                    "last_zxid": zxid,
                    "session_id": session,
                    "password": password,
                    "timeout_ms": timeout,
                }
            ),
            maybe_junk(st.just(1)),
            maybe_junk(integers),
            maybe_junk(integers),
            maybe_junk(st.binary(max_size=80)),
            maybe_junk(integers),
        ),
    ),
    (1, st.just(protocol.encode_frame({"type": "status"}))),
    (1, any_items.map(protocol.encode_frame)),
    (1, st.just(b"")),  # no handshake: the first request is read as one
)


@dataclass(frozen=True)
class Burst:
    """Frames for one connection: a fresh one (after ``handshake``) or the shared one."""

    shared: bool
    handshake: bytes
    frames: tuple[bytes, ...]
    one_write: bool


@st.composite
def bursts(draw: st.DrawFn) -> Burst:
    """Requests, and in about one burst of four a frame of garbage among them (which
    usually ends the connection, so the requests after it are not read); for a fresh
    connection after a handshake, for the shared one mostly without."""
    frames = draw(st.lists(request_frames, min_size=1, max_size=6))
    if draw(st.integers(0, 3)) == 0:
        frames.insert(draw(st.integers(0, len(frames))), draw(garbage_frames))
    shared = draw(st.booleans())
    # On the shared connection (in session already), a handshake now and then: a map
    # where a request is expected.
    handshake = draw(handshakes) if not shared or draw(st.integers(0, 3)) == 0 else b""
    return Burst(shared=shared, handshake=handshake, frames=tuple(frames), one_write=draw(st.booleans()))


MARK = protocol.encode_frame(protocol.encode_request(MARK_XID, protocol.ExistsRequest(path="/")))


# --- driving a server ------------------------------------------------------------------


def ends_mid_frame(data: bytes) -> bool:
    """Whether ``data``, read as frames, ends inside one (a length prefix or a body cut
    short); a length over the limit ends the reading (the server closes there)."""
    offset = 0
    limit = protocol.frame_bytes_max()
    while offset + 4 <= len(data):
        (length,) = protocol.HEADER.unpack_from(data, offset)
        if length > limit:
            return False
        offset += 4 + length
    return offset != len(data)


async def deliver(connection: RawConnection, burst: Burst) -> bool:
    """Send the burst and a marker request; read until the marker is answered (return
    True) or the server closes the connection (False). A server that does neither in
    time fails the test. On the shared connection the handshake frame goes too: a
    handshake where a request is expected."""
    chunks = ([burst.handshake] if burst.handshake else []) + [*burst.frames, MARK]
    try:
        if burst.one_write:
            await connection.send_bytes(b"".join(chunks))
        else:
            for chunk in chunks:
                await connection.send_bytes(chunk)
        if ends_mid_frame(b"".join(chunks)):
            # The server rightly waits for the rest of a frame it was promised (until
            # the session times out): end our side, so it sees the stream end instead.
            await connection.stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False  # closed on us mid-burst: what it does with bad input
    try:
        with trio.fail_after(BURST_DEADLINE_S):
            while True:
                item = await connection.receive()
                if item is None:
                    event("burst: connection closed by the server")
                    return False
                if type(item) is list and len(item) == 4 and item[0] != protocol.WATCH_XID:
                    event(f"reply error code {item[2]}" if item[0] != MARK_XID else "burst: all answered")
                if type(item) is list and item and item[0] == MARK_XID:
                    return True
    except trio.TooSlowError:
        raise AssertionError(
            f"the server neither answered nor closed within {BURST_DEADLINE_S}s: {burst!r:.2000}"
        ) from None
    except protocol.ProtocolError as error:
        raise AssertionError(f"the server sent a malformed frame: {error}") from None


async def run_bursts(address: tuple[str, int], plan: list[Burst]) -> int:
    """Run the bursts; return how many frames were sent."""
    shared: RawConnection | None = None
    sent = 0
    try:
        for burst in plan:
            if burst.shared:
                if shared is None:
                    shared = await RawConnection.open(address)
                    await shared.handshake(timeout_ms=10_000)
                if not await deliver(shared, burst):
                    await shared.aclose()
                    shared = None
            else:
                connection = await RawConnection.open(address)
                try:
                    await deliver(connection, burst)
                finally:
                    await connection.aclose()
            sent += len(burst.frames)
    finally:
        if shared is not None:
            await shared.aclose()
    return sent


async def well_behaved_client_is_served(address: tuple[str, int], tag: str) -> None:
    """A client that follows the protocol still gets its session, its write and its reads."""
    with trio.fail_after(10):
        good = await RawConnection.open(address)
        try:
            await good.handshake(timeout_ms=10_000)
            reply = await good.call(1, CreateRequest(path=f"/probe-{tag}", data=b"probe"))
            assert reply[2] == 0, reply
            reply = await good.call(2, GetDataRequest(path=f"/probe-{tag}"))
            assert reply[2] == 0 and reply[3][0] == b"probe", reply
            reply = await good.call(3, GetDataRequest(path=GUARD))
            assert reply[2] == 0 and reply[3][0] == b"precious", reply
        finally:
            await good.aclose()


def server_config(data_dir: Path) -> ServerConfig:
    return ServerConfig(
        data_dir=data_dir, listen_port=0, tick_ms=50, min_session_timeout_ms=100, max_session_timeout_ms=10_000
    )


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


@fuzz_settings(150)
@given(plan=st.lists(bursts(), min_size=1, max_size=4))
async def test_random_requests_never_end_an_in_process_server(plan: list[Burst]) -> None:
    with tempfile.TemporaryDirectory(prefix="coord-fuzz-") as data_dir, trio.fail_after(60):
        async with open_server(server_config(Path(data_dir))) as server:
            await create_guard(server.address)
            await run_bursts(server.address, plan)
            await well_behaved_client_is_served(server.address, "after")


async def create_guard(address: tuple[str, int]) -> None:
    connection = await RawConnection.open(address)
    try:
        await connection.handshake(timeout_ms=10_000)
        reply = await connection.call(1, CreateRequest(path=GUARD, data=b"precious"))
        assert reply[2] in (0, -110), reply  # created, or there from an earlier example
    finally:
        await connection.aclose()


# --- a server process ---------------------------------------------------------------------


@dataclass
class ServedProcess:
    process: subprocess.Popen[bytes]
    address: tuple[str, int]
    log_path: Path
    frames_sent: int = 0
    examples: int = 0

    def assert_alive(self) -> None:
        code = self.process.poll()
        log_text = self.log_path.read_text(errors="replace")
        assert code is None, f"the server exited with {code}:\n{log_text[-4000:]}"
        assert "Traceback" not in log_text, log_text[-4000:]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(coord.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _read_banner(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line ``coord serve`` prints (``coord: serving on HOST:PORT ...``)."""
    assert process.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError(f"no banner within {timeout}s")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    return line.decode(errors="replace")


@pytest.fixture(scope="module")
def served_process() -> Iterator[ServedProcess]:
    with tempfile.TemporaryDirectory(prefix="coord-fuzz-process-") as base:
        log_path = Path(base) / "server.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "coord.cli", "serve", "--data-dir", f"{base}/data", "--listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                env=_environment(),
            )
        try:
            banner = _read_banner(process, 30.0)
            assert "serving on " in banner, banner + log_path.read_text(errors="replace")
            host, _, port = banner.split("serving on ")[1].split()[0].rpartition(":")
            served = ServedProcess(process, (host, int(port)), log_path)
            trio.run(create_guard, served.address)
            yield served
            print(
                f"\nfuzz: {served.frames_sent} random frames in {served.examples} examples to one coord serve process"
            )
            served.assert_alive()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


@fuzz_settings(50)
@given(plan=st.lists(bursts(), min_size=1, max_size=3))
async def test_random_requests_never_end_a_server_process(served_process: ServedProcess, plan: list[Burst]) -> None:
    with trio.fail_after(60):
        served_process.frames_sent += await run_bursts(served_process.address, plan)
        served_process.examples += 1
        served_process.assert_alive()
        await well_behaved_client_is_served(served_process.address, str(served_process.examples))
