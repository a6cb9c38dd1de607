"""``coord backup`` and ``coord restore``: a running server's tree to a file, and back.

Why a backup is a snapshot file: the server already knows how to write, verify and
recover from one (:class:`~coord.storage.SnapshotStore`), so a backup is exactly the
file a server writes into ``data_dir/snapshots`` (header, sha256, the tree's image),
and restoring is putting it there, next to a log that continues from it.

``coord backup`` asks a server over its client port, without a session (the backup
handshake, docs/protocol.md): the server takes its tree's image at once, so the backup
is of one zxid however long the transfer takes and however many writes go on meanwhile.
The frames are staged as they come into a hidden directory next to FILE, with the
snapshot store's own staging (:meth:`~coord.storage.SnapshotStore.stage`); the staged
payload must have the size and sha256 the server announced at the end
(:meth:`~coord.storage.SnapshotStore.commit_staged`), and only then is it renamed to
FILE. On any failure nothing is left behind (an older FILE stays as it was).

``coord restore`` verifies the file completely (header, length, sha256, and that its
tree decodes) before it creates anything: it builds the data directory in a hidden
directory next to DIR (the snapshot, and an empty log whose base is the snapshot's
zxid, with the epochs the snapshot's zxid is of: what recovery,
:func:`coord.recovery.recover`, expects of a server that has purged its log through its
newest snapshot), and renames it to DIR at the end. A new ensemble starts from it: every
server restored from the same file, or one restored and the others empty (they catch
up by the usual state transfer from the leader, which the restored one becomes, as it
has the highest zxid).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import trio

from client._connection import parse_hosts
from coord import protocol
from coord.cli.args import EXIT_API_ERROR, EXIT_OK, EXIT_UNREACHABLE, stream_opener
from coord.config import Address, format_address
from coord.errors import CoordError, StorageError
from coord.protocol.handshake import BackupEnd, BackupPiece, BackupRequest, BackupStart, decode_backup_frame
from coord.status import receive_item
from coord.storage import ACCEPTED_EPOCH, CURRENT_EPOCH, SnapshotStore, TxnLog
from coord.storage.snapshot import MAGIC, fsync_directory
from coord.tree import DataTree
from coord.zxid import epoch_of

RESTORE_LOG_MAP_BYTES = 64 << 20
"""The map of the restored (empty) log; the server reopens it with its own ``log_map_bytes``."""

_SNAPSHOT_LOGGER = "coord.storage.snapshot"  # its warnings would be a second error line


_Frame = TypeVar("_Frame", BackupStart, BackupEnd)


class BackupError(Exception):
    """The backup or restore did not happen; the message says why in one line."""


class ServerUnreachableError(BackupError):
    """No connection to the server (nothing listens, or no answer in time)."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    zxid: int
    nodes: int
    size: int
    server: str


# --- backup -----------------------------------------------------------------------------


async def backup(args: argparse.Namespace) -> int:
    """``coord backup FILE``: from the first server of ``args.servers`` that serves it.

    Exit status 0 when FILE holds the backup, 3 when no server could be reached, 1
    when none gave a backup (refused: not serving; the transfer broke; it did not
    verify); each failure is one line on stderr.
    """
    file = Path(args.file)
    if not file.absolute().parent.is_dir():
        print(f"coord: cannot write {file}: {file.absolute().parent} is not a directory", file=sys.stderr)
        return EXIT_API_ERROR
    failures: list[str] = []
    reached = False
    for address in parse_hosts(args.servers, default_port=None):
        name = format_address(address)
        try:
            result = await backup_to_file(
                address, file, timeout=args.timeout, progress=Progress(sys.stderr), open_stream=stream_opener(args)
            )
        except ServerUnreachableError as error:
            failures.append(f"{name}: {error}")
            continue
        except trio.TooSlowError:
            failures.append(f"{name}: the server stalled for {args.timeout:g}s")
            reached = True
            continue
        except (BackupError, OSError, trio.BrokenResourceError, protocol.ProtocolError, CoordError) as error:
            failures.append(f"{name}: {error}")
            reached = True
            continue
        print(
            f"backed up {result.nodes} znodes at zxid {result.zxid:#x} from {result.server} "
            f"to {file} ({_size(result.size)})"
        )
        return EXIT_OK
    for failure in failures:
        print(f"coord: backup failed: {failure}", file=sys.stderr)
    return EXIT_API_ERROR if reached else EXIT_UNREACHABLE


async def backup_to_file(
    address: Address,
    file: Path,
    *,
    timeout: float,
    progress: Progress | None = None,
    open_stream: Callable[[str, int], Awaitable[Any]] = trio.open_tcp_stream,
) -> BackupResult:
    """Back up the server at ``address`` into ``file`` (replaced only once complete and verified).

    ``timeout`` bounds the connection and every wait for the next frame, not the
    whole transfer (a big tree takes as long as it takes).

    Raises:
        ServerUnreachableError: no connection to the server within ``timeout``.
        trio.TooSlowError: the server did not answer or stalled for ``timeout``.
        BackupError: the server refused (its message), or the backup did not verify.
        ProtocolError: the server sent something else than a backup.
        OSError, trio.BrokenResourceError: the connection broke, or ``file`` cannot be written.
        CoordError: a storage error while staging the file (e.g. a full disk).
    """
    file = file.absolute()
    try:
        with trio.fail_after(timeout):
            stream = await open_stream(*address)
    except OSError as error:
        raise ServerUnreachableError(f"cannot connect: {error.strerror or error}") from None
    except CoordError as error:  # the TLS opener's refusal
        raise ServerUnreachableError(f"cannot connect: {error}") from None
    except trio.TooSlowError:
        raise ServerUnreachableError(f"no connection within {timeout:g}s") from None
    async with stream:
        await stream.send_all(protocol.encode_frame(BackupRequest().to_wire()))
        reader = protocol.FrameReader(protocol.frame_bytes_max())
        with trio.fail_after(timeout):
            start = _expect(decode_backup_frame(await receive_item(stream, reader)), BackupStart)
        staging = Path(await trio.to_thread.run_sync(_make_staging_dir, file))
        try:
            store = SnapshotStore(staging)
            if progress is not None:
                progress.begin(start, format_address(address))
            offset = 0
            while True:
                with trio.fail_after(timeout):
                    frame = decode_backup_frame(await receive_item(stream, reader))
                if isinstance(frame, BackupPiece):
                    await trio.to_thread.run_sync(store.stage, start.zxid, offset, frame.data)
                    offset += len(frame.data)
                    if progress is not None:
                        progress.update(offset, frame.nodes)
                    continue
                end = _expect(frame, BackupEnd)
                try:
                    staged = await trio.to_thread.run_sync(store.commit_staged, start.zxid, end.size, end.sha256)
                except StorageError as error:
                    raise BackupError(f"the backup does not verify: {error}") from None
                await trio.to_thread.run_sync(_install, staged, file)
                break
        finally:
            if progress is not None:
                progress.end()
            shutil.rmtree(staging, ignore_errors=True)  # not awaited: it must run when cancelled too
    return BackupResult(start.zxid, start.nodes, end.size, format_address(address))


def _expect(frame: BackupStart | BackupPiece | BackupEnd | tuple[int, str], kind: type[_Frame]) -> _Frame:
    """``frame`` if it is of ``kind``; the server's error as :class:`BackupError`."""
    if isinstance(frame, tuple):
        code, message = frame
        raise BackupError(f"the server refused: {message} (error {code})")
    if not isinstance(frame, kind):
        raise protocol.ProtocolError(f"the server sent a {type(frame).__name__} where a {kind.__name__} belongs")
    return frame


def _make_staging_dir(file: Path) -> str:
    return tempfile.mkdtemp(prefix=f".{file.name}.", suffix=".partial", dir=file.parent)


def _install(staged: Path, file: Path) -> None:
    """Rename the verified snapshot to ``file`` and make the rename durable."""
    os.replace(staged, file)
    fsync_directory(file.parent)


class Progress:
    """How far a backup is, on ``stream``: a bar redrawn in place on a terminal, else a
    plain line at every tenth."""

    REDRAW_S = 0.1
    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.nodes = 0
        self.zxid = 0
        self._last_draw = 0.0
        self._last_tenth = 0
        self._drawn = False

    def begin(self, start: BackupStart, server: str) -> None:
        self.nodes, self.zxid = start.nodes, start.zxid
        if not self.tty:
            print(f"backup of {start.nodes} znodes at zxid {start.zxid:#x} from {server}", file=self.stream)

    def update(self, size: int, nodes: int) -> None:
        fraction = min(1.0, nodes / self.nodes) if self.nodes else 1.0
        if self.tty:
            now = time.monotonic()
            if now - self._last_draw < self.REDRAW_S and fraction < 1.0:
                return
            self._last_draw = now
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"\rbackup [{bar}] {fraction:4.0%} {_size(size)}, {nodes}/{self.nodes} znodes"
            self.stream.write(line)
            self.stream.flush()
            self._drawn = True
            return
        tenth = int(fraction * 10)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            print(f"backup {tenth * 10}%: {_size(size)}, {nodes}/{self.nodes} znodes", file=self.stream)

    def end(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def _size(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size} bytes"


# --- restore ----------------------------------------------------------------------------


def restore(args: argparse.Namespace) -> int:
    """``coord restore FILE --data-dir DIR``: exit status 0, or 1 with one line on stderr."""
    file, data_dir = Path(args.file), Path(args.data_dir)
    try:
        zxid, nodes = restore_data_dir(file, data_dir)
    except BackupError as error:
        print(f"coord: restore failed: {error}", file=sys.stderr)
        return EXIT_API_ERROR
    print(f"restored {nodes} znodes at zxid {zxid:#x} from {file} into {data_dir}")
    return EXIT_OK


def restore_data_dir(file: Path, data_dir: Path, *, log_map_bytes: int = RESTORE_LOG_MAP_BYTES) -> tuple[int, int]:
    """Make ``data_dir`` (absent or empty) a server's data directory holding the backup ``file``.

    Nothing is created unless ``file`` verifies completely; ``data_dir`` appears at
    the end, whole, by a rename.

    Returns:
        The backup's zxid and its number of znodes.

    Raises:
        BackupError: ``file`` is not a complete, intact backup, ``data_dir`` is not
            empty, or an I/O error (the message says which, naming the path).
    """
    data_dir = data_dir.absolute()
    _check_empty(data_dir)
    try:
        with open(file, "rb") as backup_file:
            magic = backup_file.read(len(MAGIC))
    except OSError as error:
        raise BackupError(f"cannot read {file}: {error.strerror or error}") from None
    if magic != MAGIC:
        raise BackupError(f"{file} is not a coord backup (it does not begin with {MAGIC.decode()})")
    ancestor = next(path for path in data_dir.parents if path.is_dir())  # where DIR will be renamed from
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", suffix=".restoring", dir=ancestor))
    except OSError as error:
        raise BackupError(f"cannot create a directory in {ancestor}: {error.strerror or error}") from None
    try:
        with _quiet(_SNAPSHOT_LOGGER):
            zxid, nodes = _build(file, staging, log_map_bytes)
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, data_dir)  # an empty data_dir is replaced whole
        fsync_directory(data_dir.parent)
    except OSError as error:
        raise BackupError(f"cannot restore into {data_dir}: {error}") from None
    except CoordError as error:  # StorageError of the log or snapshot store
        raise BackupError(f"cannot restore into {data_dir}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return zxid, nodes


def _check_empty(data_dir: Path) -> None:
    if not os.path.lexists(data_dir):
        return
    if not data_dir.is_dir():
        raise BackupError(f"{data_dir} exists and is not a directory")
    try:
        empty = not any(data_dir.iterdir())
    except OSError as error:
        raise BackupError(f"cannot read {data_dir}: {error.strerror or error}") from None
    if not empty:
        raise BackupError(f"{data_dir} is not empty: restore into a new or empty directory")


def _build(file: Path, staging: Path, log_map_bytes: int) -> tuple[int, int]:
    """Copy ``file`` into ``staging/snapshots`` and verify it there; then the log beside it."""
    store = SnapshotStore(staging / "snapshots")
    copy = store.directory / "snapshot.restoring"
    shutil.copyfile(file, copy)
    listed = store.list()  # header and length
    if not listed:
        raise BackupError(f"{file} is truncated or damaged: its length does not match its header")
    zxid = listed[0][0]
    pieces = store.read_pieces(zxid)
    try:
        first = next(pieces)  # verifies the whole file's sha256 before yielding anything
    except StorageError:
        raise BackupError(f"{file} is damaged: its contents do not match its sha256") from None
    try:
        tree = DataTree.from_pieces(itertools.chain([first], pieces))
    except ValueError as error:
        raise BackupError(f"{file} holds no valid tree: {error}") from None
    if tree.last_zxid != zxid:
        raise BackupError(f"{file} says zxid {zxid:#x} but holds a tree at {tree.last_zxid:#x}")
    copy.rename(store.directory / f"snapshot.{zxid:016x}")
    fsync_directory(store.directory)
    with TxnLog.open(staging / "log", map_bytes=log_map_bytes) as txn_log:
        txn_log.purge_through(zxid)  # the base: the log continues right after the snapshot
        txn_log.set_meta(ACCEPTED_EPOCH, epoch_of(zxid))
        txn_log.set_meta(CURRENT_EPOCH, epoch_of(zxid))
    fsync_directory(staging)
    return zxid, tree.node_count


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Keep the logger ``name`` from printing warnings meanwhile (we say what failed ourselves)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


__all__ = [
    "BackupError",
    "BackupResult",
    "Progress",
    "ServerUnreachableError",
    "backup",
    "backup_to_file",
    "restore",
    "restore_data_dir",
]
