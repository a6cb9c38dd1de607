"""The snapshot image of a data tree: its bytes, written and read a chunk of nodes at a time.

A snapshot file, a SNAP sent to a follower and a backup all carry this image. It must
be deterministic (equal trees give equal bytes: the digest compares servers), stream
in bounded pieces (a tree of any size, never whole in memory), and above all load
fast: a restart and a SNAP install rebuild a million znodes from it.

Format 3 (written): one indefinite-length CBOR array ``[head, chunk, chunk, ...]``.
``head`` is ``["coord-tree", 3, last_zxid, sessions]`` with ``sessions`` as
``[[session_id, timeout_ms, password], ...]`` by id. The nodes, sorted by path, go in
chunks of at most 4096 nodes and 1 MiB of data; a chunk is *column-wise*::

    [paths, data, [column, ...]]

``paths`` is the UTF-8 of the chunk's paths joined by NUL (no valid path holds one);
``data`` is their data concatenated; then 13 columns of unsigned little-endian
integers, one per field in :class:`~coord.znode.Node` order with the data's length
first (length, czxid, mzxid, ctime, mtime, version, cversion, aversion,
ephemeral_owner, num_children, pzxid, mode, ttl_ms). Each column takes the narrowest
of 1, 2, 4 or 8 bytes per value that holds its largest, so its width is its length
divided by the chunk's node count.

Why columns: format 2 (still read, so older data directories and backups load) gave
each node as a CBOR array of its fields, and rebuilding a node cost a Python loop
iteration of some twenty steps: 2.75 s for a million nodes. Columns let the
standard library do the work in C: ``bytes.split`` for the paths, slices for the
data, ``array.tolist`` for the integers, ``zip`` and ``tuple.__new__`` for the
nodes, ``str.rpartition`` and ``itertools.groupby`` for the child sets. Equal
integers of a chunk (a create stores one zxid as czxid, mzxid and pzxid) are shared
through one dict, as in the live tree, since each int object costs 32 bytes.

Decoding trusts nothing: a malformed or inconsistent image raises ``ValueError``
(the structural checks that every child set matches its parent's ``num_children``
are :class:`~coord.tree.DataTree`'s, run on what :func:`decode_image` returns).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, chain, compress, groupby, repeat
from operator import itemgetter
from typing import Any, Final

import cbor2

from coord.cbor_pieces import array_items
from coord.znode import CONTAINER_MODE, Node, SessionRecord, TreeImage

__all__ = ["IMAGE_FORMAT", "DecodedImage", "collector_paused", "decode_image", "image_pieces"]

IMAGE_MAGIC: Final = "coord-tree"
IMAGE_FORMAT: Final = 3
_FORMAT_ROWS: Final = 2  # the node-per-array format, read only

CHUNK_NODES: Final = 4096
"""At most this many nodes per chunk."""
CHUNK_DATA_BYTES: Final = 1 << 20
"""And at most this much data per chunk (a single larger node goes alone)."""

_FIELDS: Final = 13  # columns per chunk: the data's length, then Node's 12 integer fields
_MAX_MODE: Final = 6  # the largest CreateMode number
_WIDE: Final = 8  # columns of this width hold zxids and times: their equal values are shared
_SAME_AS: Final = {2: 1, 4: 3, 10: 1}  # mzxid, mtime, pzxid: the column they most often equal (czxid, ctime)
_TYPECODES: Final = {array(code).itemsize: code for code in "BHIQ"}
_BIG_ENDIAN: Final = sys.byteorder == "big"
_new_tuple = tuple.__new__
_INDEFINITE_ARRAY: Final = b"\x9f"  # the head of a CBOR array whose end is a break
_BREAK: Final = b"\xff"
_END: Final = object()  # what next() gives at the end of the image's elements (None is an element)
_ROOT: Final = "/"
_second = itemgetter(2)


@dataclass(slots=True)
class DecodedImage:
    """A tree as an image holds it, plus the derived indexes rebuilt while reading it."""

    last_zxid: int
    sessions: dict[int, SessionRecord]
    nodes: dict[str, Node] = field(default_factory=dict)
    children: dict[str, set[str]] = field(default_factory=dict)
    ephemerals: dict[int, set[str]] = field(default_factory=dict)
    containers: set[str] = field(default_factory=set)
    ttls: set[str] = field(default_factory=set)


# --- writing -------------------------------------------------------------------------


def image_pieces(image: TreeImage) -> Iterator[bytes]:
    """The image's bytes, lazily, in pieces: the outer array's head with the head item,
    then one piece per chunk of nodes, each encoded only when it is asked for, then
    the break that ends the array.

    Touches only ``image`` (safe in a worker thread, a piece at a time, while the
    tree keeps changing). Nothing is sorted before the first piece is asked for.
    """
    nodes = image.nodes
    paths = sorted(nodes)
    sessions = [
        [session_id, record.timeout_ms, record.password] for session_id, record in sorted(image.sessions.items())
    ]
    # An indefinite-length array: how many chunks the data bound makes is known only as
    # they are encoded, and counting first would touch every node twice (a node is a
    # cache miss: that pass cost 0.4 s of 2 s at a million).
    yield _INDEFINITE_ARRAY + cbor2.dumps([IMAGE_MAGIC, IMAGE_FORMAT, image.last_zxid, sessions])
    # One call per chunk, not one over the whole tree: the column builders hold the
    # GIL for a call, and between chunks the trio thread gets its turn.
    for start in range(0, len(paths), CHUNK_NODES):
        chunk = paths[start : start + CHUNK_NODES]
        # Row by row into one flat list, then a column is a strided slice: zip(*nodes)
        # reads the nodes column by column, a cache miss each time (1.2 s against 0.5 s).
        flat = list(chain.from_iterable(map(nodes.__getitem__, chunk)))
        yield from _encode_chunks(chunk, flat)
    yield _BREAK


def _encode_chunks(paths: list[str], flat: list[Any]) -> Iterator[bytes]:
    """The chunk of ``paths`` (whose nodes' fields ``flat`` holds, in a row), halved
    while its data is over CHUNK_DATA_BYTES (a single larger node goes alone)."""
    data = flat[0::_FIELDS]
    lengths = list(map(len, data))
    if sum(lengths) > CHUNK_DATA_BYTES and len(paths) > 1:
        middle = len(paths) // 2
        yield from _encode_chunks(paths[:middle], flat[: middle * _FIELDS])
        yield from _encode_chunks(paths[middle:], flat[middle * _FIELDS :])
        return
    columns = [_column(lengths)] + [_column(flat[index::_FIELDS]) for index in range(1, _FIELDS)]
    yield cbor2.dumps(["\0".join(paths).encode(), b"".join(data), columns])


def _column(values: Iterable[int]) -> bytes:
    """``values`` (non-negative) as little-endian integers of the narrowest width that fits."""
    values = list(values)
    top = max(values)
    for width, code in sorted(_TYPECODES.items()):
        if top < 1 << (8 * width):
            column = array(code, values)
            break
    else:
        raise ValueError(f"a node field of {top} does not fit in 64 bits")
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


# --- reading -------------------------------------------------------------------------

_pause_lock = threading.Lock()
_pauses = 0  # loads in progress that paused the collector (a SNAP install and a backup may overlap)
_was_enabled = False  # whether the outermost pause found the collector on
_freeze = False  # whether a pause asked for what it built to be frozen


@contextlib.contextmanager
def collector_paused(*, freeze: bool = False) -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a tree is built, then restore it.

    Building a million nodes (``Node`` is a tuple subclass, which the collector keeps
    tracking) triggers full collections that walk every node built so far: 1.5 s of
    a 4.3 s load of a million. The nodes form no cycles (reference counting frees
    them), so nothing is lost by pausing; a collector that was off stays off.

    With ``freeze``, everything tracked when the outermost pause ends is moved to the
    collector's permanent generation (``gc.freeze``) before it is turned back on: a
    server's tree lives as long as the server, and otherwise the first collection
    after the pause walks the million new nodes (0.3 s) and every full collection
    after that again. So that no garbage is frozen with it (where it would stay), a
    full collection runs first, before the tree is built (cheap then: an earlier tree
    is frozen itself). Garbage cycles made by other threads while the tree is built
    are frozen too: a server freezes at start (nothing else runs) and per SNAP.
    """
    global _pauses, _was_enabled, _freeze
    with _pause_lock:
        _pauses += 1
        _freeze = _freeze or freeze
        if _pauses == 1:
            _was_enabled = gc.isenabled()
            if freeze:
                gc.collect()
            gc.disable()
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0:
                if _freeze:
                    gc.freeze()
                    _freeze = False
                if _was_enabled:
                    gc.enable()


def decode_image(pieces: Iterable[bytes]) -> DecodedImage:
    """The tree an image holds, from its bytes in ``pieces`` of any sizes, decoded one
    chunk at a time (only the result, one chunk and one piece are in memory).

    Raises:
        ValueError: the bytes are not a well-formed image of format 2 or 3 (or bytes
            follow it).
    """
    with collector_paused():
        return _decode(array_items(pieces))


def _decode(items: Iterator[Any]) -> DecodedImage:
    try:
        head: Any = next(items, _END)
        if head is _END:
            raise ValueError("the image is an empty array")
        (magic, image_format, last_zxid, sessions) = head
    except (cbor2.CBORDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"malformed tree image: {error}") from error
    if magic != IMAGE_MAGIC or image_format not in (IMAGE_FORMAT, _FORMAT_ROWS) or type(last_zxid) is not int:
        raise ValueError(f"not a tree image of format {IMAGE_FORMAT}: {magic!r:.20} {image_format!r:.20}")
    try:
        records = {sid: SessionRecord(sid, timeout_ms, password) for sid, timeout_ms, password in sessions}
    except (ValueError, TypeError) as error:
        raise ValueError(f"malformed tree image: {error}") from error
    image = DecodedImage(last_zxid, records)
    add = _add_columns if image_format == IMAGE_FORMAT else _add_rows
    first = True
    while True:
        try:
            chunk: Any = next(items, _END)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as error:
            raise ValueError(f"malformed tree image: {error}") from error
        if chunk is _END:
            return image
        try:
            add(image, chunk, first)
        except (TypeError, ValueError, KeyError, UnicodeDecodeError, OverflowError) as error:
            raise ValueError(f"malformed chunk in tree image: {error}") from error
        first = False


def _add_columns(image: DecodedImage, chunk: Any, first: bool) -> None:
    """Add one format-3 chunk's nodes to ``image`` (see the module docstring)."""
    raw_paths, data, raw_columns = chunk
    if type(raw_paths) is not bytes or type(data) is not bytes or type(raw_columns) is not list:
        raise ValueError("a chunk is not [paths, data, columns]")
    paths = raw_paths.decode().split("\0")
    count = len(paths)
    if len(raw_columns) != _FIELDS:
        raise ValueError(f"a chunk has {len(raw_columns)} columns, not {_FIELDS}")
    columns: list[list[int]] = []
    shared: dict[int, int] = {}
    share = shared.setdefault  # one int object per distinct value in the chunk
    for index, raw in enumerate(raw_columns):
        if type(raw) is not bytes:
            raise ValueError("a column is not a byte string")
        width, extra = divmod(len(raw), count)
        if extra or width not in _TYPECODES:
            raise ValueError(f"a column of {len(raw)} bytes for {count} nodes")
        same = _SAME_AS.get(index)
        if same is not None and raw == raw_columns[same]:
            # mzxid and pzxid as czxid, mtime as ctime, node for node (no node changed since
            # its create): the same ints, neither converted nor shared again.
            columns.append(columns[same])
            continue
        column = array(_TYPECODES[width])
        column.frombytes(raw)
        if _BIG_ENDIAN:
            column.byteswap()
        values = column.tolist()
        columns.append(list(map(share, values, values)) if width == _WIDE else values)
    lengths = columns[0]
    ends = list(accumulate(lengths))
    if ends[-1] != len(data):
        raise ValueError(f"the data lengths add up to {ends[-1]}, the chunk holds {len(data)} bytes")
    modes = columns[11]
    if max(modes) > _MAX_MODE:
        raise ValueError(f"a node of mode {max(modes)}")
    datas = map(data.__getitem__, map(slice, [0, *ends[:-1]], ends))
    image.nodes.update(zip(paths, map(_new_tuple, repeat(Node), zip(datas, *columns[1:], strict=True)), strict=True))
    # Child sets: siblings come in runs (paths are sorted), each added in one C call.
    children = image.children
    named = paths[1:] if first and paths[0] == _ROOT else paths
    for parent, run in groupby(map(str.rpartition, named, repeat("/")), itemgetter(0)):
        names = children.get(parent or _ROOT)
        if names is None:
            children[parent or _ROOT] = set(map(_second, run))
        else:
            names.update(map(_second, run))
    owners = columns[8]
    ephemerals = image.ephemerals
    for path, owner in zip(compress(paths, owners), filter(None, owners), strict=True):
        held = ephemerals.get(owner)
        if held is None:
            ephemerals[owner] = {path}
        else:
            held.add(path)
    image.ttls.update(compress(paths, columns[12]))
    image.containers.update(compress(paths, map(CONTAINER_MODE.__eq__, modes)))


def _add_rows(image: DecodedImage, chunk: Any, first: bool) -> None:
    """Add one format-2 chunk (``[path, node fields, path, node fields, ...]``) to ``image``."""
    if type(chunk) is not list or len(chunk) % 2:
        raise ValueError("a chunk is not a list of paths and nodes")
    nodes, children, ephemerals = image.nodes, image.children, image.ephemerals
    pairs = iter(chunk)
    for path, fields in zip(pairs, pairs, strict=True):
        (node_data, cz, mz, ct, mt, v, cv, av, owner, nc, pz, mode, ttl) = fields
        if type(mode) is not int or not 0 <= mode <= _MAX_MODE:
            raise ValueError(f"a node of mode {mode!r:.20}")
        nodes[path] = _new_tuple(Node, (node_data, cz, mz, ct, mt, v, cv, av, owner, nc, pz, mode, ttl))
        if path != _ROOT:
            parent, _, name = path.rpartition("/")
            names = children.get(parent or _ROOT)
            if names is None:
                children[parent or _ROOT] = {name}
            else:
                names.add(name)
        if owner:
            ephemerals.setdefault(owner, set()).add(path)
        elif ttl:
            image.ttls.add(path)
        elif mode == CONTAINER_MODE:
            image.containers.add(path)
