"""A damaged data directory is refused at start with one line naming the file and the fix.

Each case starts from a data directory that a real server wrote (in-process, real
LMDB), damaged the way an operator, a bad copy or a failing disk would damage it.
Recovery runs in a child process: before the fix a truncated log killed the process
with SIGBUS, which would take the test run with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import client
from coord.config import ServerConfig
from coord.recovery import RecoveryError, recover
from coord.server import open_server
from coord.storage.lmdb_check import free_pages, read_meta

REPO = Path(__file__).resolve().parents[2]
NODES = 40
VALUE = b"v" * 2000

RECOVER_CHILD = """
import sys
from pathlib import Path
from coord.recovery import RecoveryError, recover

try:
    recovered = recover(Path(sys.argv[1]), log_map_bytes=1 << 30, replay=True)
except RecoveryError as error:
    print("RecoveryError", error)
else:
    recovered.log.close()
    print("recovered", recovered.tree.node_count, hex(recovered.tree.last_zxid))
"""


async def _write(data_dir: Path, *, snapshot_at: int | None) -> None:
    config = ServerConfig(data_dir=data_dir, listen_port=0, log_map_bytes=64 << 20)
    async with open_server(config) as server:
        async with client.connect(server.connect_string) as zk:
            for n in range(NODES):
                if n == snapshot_at:
                    await server.take_snapshot()
                await zk.create(f"/n{n}", VALUE)
        if snapshot_at == NODES:
            await server.take_snapshot()  # after the session's close too: the log is purged empty
            assert server._log.stats()["entries"] == 0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data directories written by a real server: a log only; a snapshot with the log
    purged behind it and entries after it; a snapshot taken last (the log is empty:
    before the fix, losing that snapshot went unnoticed by recovery and the server
    then failed an assertion in ZAB, "entries after 0x0(0:0) were purged")."""
    base = tmp_path_factory.mktemp("pristine")
    dirs = {"log-only": None, "snapshot-then-log": NODES // 2, "snapshot-last": NODES}
    for name, snapshot_at in dirs.items():
        trio.run(lambda name=name, at=snapshot_at: _write(base / name, snapshot_at=at))
    return {name: base / name for name in dirs}


@pytest.fixture
def copy(pristine: dict[str, Path], tmp_path: Path):
    def make(name: str) -> Path:
        target = tmp_path / "coord-data"
        shutil.copytree(pristine[name], target)
        return target

    return make


def recover_in_child(data_dir: Path) -> str:
    """Run recovery in a child process; its one line of output (or how it died)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", RECOVER_CHILD, str(data_dir)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, f"recovery died (status {done.returncode}): {done.stderr[-2000:]}"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return lines[0]


def assert_refused(line: str, *names: str) -> str:
    assert line.startswith("RecoveryError "), line
    message = line.removeprefix("RecoveryError ")
    for name in names:
        assert name in message, (name, message)
    assert "restore" in message and "from a backup" in message and "delete it" in message, message
    return message


def test_the_pristine_directories_recover_completely(pristine: dict[str, Path]) -> None:
    for data_dir in pristine.values():
        assert recover_in_child(data_dir).startswith(f"recovered {NODES + 2} ")


def test_a_log_truncated_to_half_is_refused_not_a_sigbus(copy) -> None:
    data_dir = copy("log-only")
    log_file = data_dir / "log" / "data.mdb"
    meta, size = read_meta(log_file)
    os.truncate(log_file, size // 2)
    message = assert_refused(recover_in_child(data_dir), str(log_file), "is truncated", str(data_dir))
    assert f"({size // 2} bytes, its meta pages need {meta.needed_bytes}" in message


def highest_page_in_use(log_file: Path) -> tuple[int, int]:
    """The last page of the log file that a B+tree uses, and the page size."""
    meta, size = read_meta(log_file)
    with open(log_file, "rb") as file:
        free = free_pages(file, meta, size)
    assert free is not None
    return max(set(range(meta.last_page + 1)) - free), meta.page_bytes


def test_a_log_missing_only_its_last_page_in_use_is_refused(copy) -> None:
    data_dir = copy("log-only")
    log_file = data_dir / "log" / "data.mdb"
    live, page_bytes = highest_page_in_use(log_file)
    os.truncate(log_file, (live + 1) * page_bytes - 1)
    assert_refused(recover_in_child(data_dir), str(log_file), "is truncated")  # its free list, here


def test_a_log_missing_only_free_pages_recovers_everything(copy) -> None:
    """What LMDB itself may leave behind: nothing reads free pages, so nothing is lost."""
    data_dir = copy("log-only")
    log_file = data_dir / "log" / "data.mdb"
    live, page_bytes = highest_page_in_use(log_file)
    os.truncate(log_file, (live + 1) * page_bytes)
    assert recover_in_child(data_dir).startswith(f"recovered {NODES + 2} ")


@pytest.mark.parametrize("name", ["log-only", "snapshot-then-log"])
def test_an_empty_log_file_is_refused_not_silently_reinitialised(copy, name: str) -> None:
    data_dir = copy(name)
    log_file = data_dir / "log" / "data.mdb"
    os.truncate(log_file, 0)
    assert_refused(recover_in_child(data_dir), str(log_file), "is empty")
    assert log_file.stat().st_size == 0  # left as it was


def test_a_missing_log_beside_snapshots_is_refused(copy) -> None:
    data_dir = copy("snapshot-then-log")
    log_file = data_dir / "log" / "data.mdb"
    log_file.unlink()
    assert_refused(recover_in_child(data_dir), str(log_file), "is missing", "snapshot.")
    assert not log_file.exists()


def test_a_new_directory_starts_empty(tmp_path: Path) -> None:
    assert recover_in_child(tmp_path / "new").startswith("recovered 2 0x0")


def test_missing_snapshots_lose_nothing_while_the_log_starts_at_the_beginning(copy) -> None:
    data_dir = copy("log-only")
    shutil.rmtree(data_dir / "snapshots", ignore_errors=True)
    assert recover_in_child(data_dir).startswith(f"recovered {NODES + 2} ")


@pytest.mark.parametrize("name", ["snapshot-last", "snapshot-then-log"])
@pytest.mark.parametrize("damage", ["flip-a-byte", "delete"])
def test_a_damaged_sole_snapshot_with_the_log_purged_behind_it_is_refused(copy, name: str, damage: str) -> None:
    data_dir = copy(name)
    (snapshot,) = (data_dir / "snapshots").glob("snapshot.*")
    if damage == "delete":
        snapshot.unlink()
    else:
        with open(snapshot, "r+b") as file:
            file.seek(-10, os.SEEK_END)
            byte = file.read(1)
            file.seek(-10, os.SEEK_END)
            file.write(bytes([byte[0] ^ 0xFF]))
    log_file = data_dir / "log" / "data.mdb"
    message = assert_refused(recover_in_child(data_dir), str(log_file), "was purged through", "lost")
    if damage == "flip-a-byte":
        assert snapshot.name in message


def test_a_damaged_log_entry_names_the_file(copy) -> None:
    import lmdb

    data_dir = copy("log-only")
    env = lmdb.open(str(data_dir / "log"), max_dbs=4)
    try:
        db = env.open_db(b"log")
        with env.begin(db=db, write=True) as txn:
            key, value = next(iter(txn.cursor()))
            txn.put(key, value[:-1] + bytes([value[-1] ^ 1]))
    finally:
        env.close()
    assert_refused(recover_in_child(data_dir), str(data_dir / "log" / "data.mdb"), "fails its checksum")


def test_the_message_is_one_line_in_process_too(copy) -> None:
    data_dir = copy("log-only")
    os.truncate(data_dir / "log" / "data.mdb", 0)
    with pytest.raises(RecoveryError) as caught:
        recover(data_dir, log_map_bytes=1 << 30)
    assert "\n" not in str(caught.value)
