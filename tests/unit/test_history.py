"""The exact history checker: a clean history passes; lost, invented, stale and out-of-order ones fail."""

from __future__ import annotations

from dataclasses import replace

from coord.protocol import CreateMode
from coord.testing.history import (
    HistoryRecorder,
    MergedLog,
    Operation,
    OpKind,
    ServerLog,
    WatchRecord,
    check_history,
    linearizability_calls,
    merge_logs,
)
from coord.testing.linearizability import Outcome, check
from coord.tree import DataTree
from coord.txn import (
    CloseSessionTxn,
    CreateSessionTxn,
    CreateTxn,
    DeleteTxn,
    ErrorTxn,
    SetDataTxn,
    Txn,
    TxnBody,
    encode_txn,
    make_zxid,
)

BAD_VERSION = -103
NO_NODE = -101


def z(counter: int, epoch: int = 1) -> int:
    return make_zxid(epoch, counter)


SESSION = z(1)  # a session's id is the zxid of its CreateSessionTxn
OTHER = z(2)


class Run:
    """A hand-built run: the committed txns and what the clients saw."""

    def __init__(self) -> None:
        self.txns: list[Txn] = []
        self.recorder = HistoryRecorder()
        self.time = 0.0
        self.txn(CreateSessionTxn(timeout_ms=1000, password=b"p"), session=0)
        self.txn(CreateSessionTxn(timeout_ms=1000, password=b"q"), session=0)
        self.txn(CreateTxn(path="/h", data=b"root", mode=CreateMode.PERSISTENT), session=OTHER)
        self.recorder.operations.append(self.root_op())

    def root_op(self) -> Operation:
        root = z(3)
        return Operation(
            op_id=-1,
            process=-1,
            session_id=OTHER,
            kind=OpKind.CREATE,
            path="/h",
            invoke_time=-1.0,
            value=b"root",
            complete_time=-0.5,
            outcome=Outcome.OK,
            zxid=root,
            stat=(0, root, root),
        )

    @property
    def next_zxid(self) -> int:
        return z(len(self.txns) + 1)

    def txn(self, body: TxnBody, *, session: int = SESSION) -> int:
        zxid = self.next_zxid
        self.txns.append(Txn(zxid=zxid, time_ms=0, session_id=session, xid=len(self.txns), body=body))
        return zxid

    def tick(self) -> float:
        self.time += 1.0
        return self.time

    # --- operations that happen, each with its txn -----------------------------------

    def create(self, path: str, value: bytes, *, process: int = 1, session: int = SESSION) -> Operation:
        op = self.recorder.invoke(
            process=process, session_id=session, kind=OpKind.CREATE, path=path, value=value, time=self.tick()
        )
        zxid = self.txn(CreateTxn(path=path, data=value, mode=CreateMode.PERSISTENT), session=session)
        self.recorder.ok(op, time=self.tick(), zxid=zxid, stat=(0, zxid, zxid))
        return op

    def set(self, path: str, value: bytes, version: int, new_version: int, *, session: int = SESSION) -> Operation:
        op = self.recorder.invoke(
            process=1, session_id=session, kind=OpKind.SET, path=path, value=value, version=version, time=self.tick()
        )
        zxid = self.txn(SetDataTxn(path=path, data=value), session=session)
        self.recorder.ok(op, time=self.tick(), zxid=zxid, stat=(new_version, 0, zxid))
        return op

    def failed_set(self, path: str, value: bytes, version: int, code: int) -> Operation:
        op = self.recorder.invoke(
            process=1, session_id=SESSION, kind=OpKind.SET, path=path, value=value, version=version, time=self.tick()
        )
        zxid = self.txn(ErrorTxn(code=code))
        self.recorder.failed(op, time=self.tick(), zxid=zxid, error=code)
        return op

    def delete(self, path: str) -> Operation:
        op = self.recorder.invoke(process=1, session_id=SESSION, kind=OpKind.DELETE, path=path, time=self.tick())
        zxid = self.txn(DeleteTxn(path=path))
        self.recorder.ok(op, time=self.tick(), zxid=zxid)
        return op

    def get(
        self, path: str, read: tuple[bytes, int, int] | None, *, kind: OpKind = OpKind.GET, zxid: int | None = None
    ) -> Operation:
        seen = self.txns[-1].zxid
        op = self.recorder.invoke(process=2, session_id=SESSION, kind=kind, path=path, time=self.tick())
        at = seen if zxid is None else zxid
        if read is None:
            self.recorder.failed(op, time=self.tick(), zxid=at, error=NO_NODE)
        else:
            self.recorder.ok(op, time=self.tick(), zxid=at, read=read)
        return op

    # --- checking -----------------------------------------------------------------------

    def logs(self, servers: int = 3) -> list[ServerLog]:
        entries = [(txn.zxid, encode_txn(txn)) for txn in self.txns]
        return [ServerLog(server_id=i, entries=entries) for i in range(1, servers + 1)]

    def merged(self) -> MergedLog:
        return merge_logs(self.logs())

    def check(self, **kw: object):  # type: ignore[no-untyped-def]
        return check_history(self.recorder.operations, self.merged(), **kw)  # type: ignore[arg-type]


def clean_run() -> Run:
    run = Run()
    a = run.create("/h/a", b"a1")
    run.get("/h/a", (b"a1", 0, a.zxid))  # type: ignore[arg-type]
    s = run.set("/h/a", b"a2", version=0, new_version=1)
    run.get("/h/a", (b"a2", 1, s.zxid), kind=OpKind.SYNC_GET)  # type: ignore[arg-type]
    run.failed_set("/h/a", b"a3", version=0, code=BAD_VERSION)
    run.delete("/h/a")
    run.get("/h/a", None)
    return run


def kinds(report) -> list[str]:  # type: ignore[no-untyped-def]
    return [violation.kind for violation in report.violations]


def test_a_clean_history_passes_both_checkers() -> None:
    run = clean_run()
    report = run.check(final_state={"/h/a": None})
    assert report.ok, report.describe(run.recorder.operations)
    assert report.stats["writes confirmed"] == 5  # with the root
    assert report.stats["reads checked"] == 3
    assert check(linearizability_calls(run.recorder.operations)).ok


def test_an_acknowledged_write_missing_from_the_log_is_lost() -> None:
    run = clean_run()
    extra = run.create("/h/b", b"b1")
    run.txns.pop()  # the servers never logged it
    report = run.check()
    assert kinds(report) == ["lost"]
    assert report.violations[0].op_ids == (extra.op_id,)
    assert "lost" in report.describe(run.recorder.operations)


def test_a_write_at_another_zxid_or_with_other_content_is_caught() -> None:
    run = clean_run()
    run.create("/h/x", b"x0")
    run.set("/h/x", b"x1", version=0, new_version=1)
    run.txns[-1] = replace(run.txns[-1], body=SetDataTxn(path="/h/x", data=b"other"))
    assert kinds(run.check()) == ["wrong-txn"]


def test_a_txn_no_client_sent_is_invented() -> None:
    run = clean_run()
    run.txn(SetDataTxn(path="/h", data=b"from nowhere"))
    assert kinds(run.check()) == ["invented"]


def test_a_write_applied_twice_is_caught() -> None:
    run = clean_run()
    run.txn(CreateTxn(path="/h/again", data=b"a1", mode=CreateMode.PERSISTENT))  # a1's value again
    assert "duplicated" in kinds(run.check())


def test_an_unknown_write_may_or_may_not_be_in_the_log() -> None:
    run = clean_run()
    applied = run.recorder.invoke(
        process=3, session_id=SESSION, kind=OpKind.CREATE, path="/h/u", value=b"u", time=run.tick()
    )
    run.recorder.unknown(applied, error=-4)
    run.txn(CreateTxn(path="/h/u", data=b"u", mode=CreateMode.PERSISTENT))
    lost = run.recorder.invoke(process=3, session_id=SESSION, kind=OpKind.SET, path="/h/u", value=b"v", time=run.tick())
    run.recorder.unknown(lost, error=-4)
    report = run.check()
    assert report.ok, report.describe(run.recorder.operations)
    assert report.stats["unknown writes applied"] == 1


def test_an_error_answer_must_be_justified_by_the_state() -> None:
    run = Run()
    run.create("/h/a", b"a1")
    run.failed_set("/h/a", b"a2", version=0, code=BAD_VERSION)  # but the version WAS 0
    report = run.check()
    assert kinds(report) == ["wrong-result"]


def test_a_stale_read_is_caught_and_explained() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    run.set("/h/a", b"a2", version=0, new_version=1)
    stale = run.get("/h/a", (b"a1", 0, a.zxid))  # type: ignore[arg-type]  # at the latest zxid
    report = run.check()
    assert kinds(report) == ["read"]
    assert f"state at {a.zxid:#x}" in report.violations[0].message
    assert report.violations[0].op_ids == (stale.op_id,)


def test_a_read_of_a_value_that_never_was_is_caught() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    run.get("/h/a", (b"bogus", 0, a.zxid))  # type: ignore[arg-type]
    report = run.check()
    assert kinds(report) == ["read"] and "never was" in report.violations[0].message


def test_a_read_from_beyond_the_log_is_caught() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    run.get("/h/a", (b"a1", 0, a.zxid), zxid=z(99))  # type: ignore[arg-type]
    assert kinds(run.check()) == ["read"]


def test_a_session_going_back_in_zxids_is_caught() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    run.set("/h/a", b"a2", version=0, new_version=1)
    run.get("/h/a", (b"a1", 0, a.zxid), zxid=a.zxid)  # type: ignore[arg-type]  # consistent, but older
    report = run.check()
    assert kinds(report) == ["session-order"]


def test_real_time_order_must_agree_with_zxid_order() -> None:
    run = Run()
    first = run.create("/h/a", b"a1")
    second = run.create("/h/b", b"b1", process=2, session=OTHER)
    # swap their completion order in time: the later zxid completed before the earlier was invoked
    first.invoke_time, first.complete_time = 10.0, 11.0
    second.invoke_time, second.complete_time = 5.0, 6.0
    assert "real-time" in kinds(run.check())


def test_a_synced_read_must_see_every_write_completed_before_it() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    write = run.set("/h/a", b"a2", version=0, new_version=1, session=OTHER)
    read = run.get("/h/a", (b"a1", 0, a.zxid), kind=OpKind.SYNC_GET, zxid=a.zxid)  # type: ignore[arg-type]
    read.session_id = z(77)  # another session: no session-order shortcut
    report = run.check()
    assert kinds(report) == ["real-time"]
    assert report.violations[0].op_ids == (write.op_id, read.op_id)
    # the same stale answer from a plain read is allowed (sequential consistency)
    read.kind = OpKind.GET
    assert run.check().ok


def test_servers_disagreeing_on_a_zxid_are_caught() -> None:
    run = clean_run()
    logs = run.logs()
    bad = list(logs[1].entries)
    zxid, _ = bad[3]
    bad[3] = (zxid, encode_txn(replace(run.txns[3], body=SetDataTxn(path="/h/a", data=b"evil"))))
    merged = merge_logs([logs[0], ServerLog(server_id=2, entries=bad), logs[2]])
    assert [v.kind for v in merged.violations] == ["divergent-log"]
    # and a server missing an entry the others hold in the same range
    missing = [entry for entry in logs[2].entries if entry[0] != zxid]
    merged = merge_logs([logs[0], ServerLog(server_id=3, entries=missing)])
    assert [v.kind for v in merged.violations] == ["divergent-log"]


def test_a_gap_in_every_log_is_caught() -> None:
    run = clean_run()
    entries = [entry for entry in run.logs()[0].entries if entry[0] != z(5)]
    merged = merge_logs([ServerLog(server_id=1, entries=entries)])
    assert "log-gap" in [v.kind for v in merged.violations]


def test_purged_logs_start_from_a_snapshot() -> None:
    run = clean_run()
    tree = DataTree()
    for txn in run.txns[:4]:
        tree.apply(txn)
    entries = [(txn.zxid, encode_txn(txn)) for txn in run.txns[4:]]
    logs = [ServerLog(server_id=i, entries=entries, base_zxid=z(4), snapshots={z(4): tree}) for i in (1, 2)]
    merged = merge_logs(logs)
    assert merged.violations == [] and merged.base_zxid == z(4)
    report = check_history(run.recorder.operations, merged)
    assert report.ok, report.describe(run.recorder.operations)
    assert report.stats["writes before the base"] >= 1


def test_the_final_state_must_hold_the_last_acknowledged_write() -> None:
    run = Run()
    run.create("/h/a", b"a1")
    run.set("/h/a", b"a2", version=0, new_version=1)
    assert run.check(final_state={"/h/a": (b"a2", 1)}).ok
    report = run.check(final_state={"/h/a": (b"a1", 0)})
    assert set(kinds(report)) == {"missing-at-end"}


def test_closing_a_session_deletes_its_ephemerals_in_the_replay() -> None:
    run = Run()
    op = run.recorder.invoke(
        process=1, session_id=SESSION, kind=OpKind.CREATE, path="/h/e", value=b"e", ephemeral=True, time=run.tick()
    )
    zxid = run.txn(CreateTxn(path="/h/e", data=b"e", mode=CreateMode.EPHEMERAL, ephemeral_owner=SESSION))
    run.recorder.ok(op, time=run.tick(), zxid=zxid, stat=(0, zxid, zxid))
    run.txn(CloseSessionTxn(session_id=SESSION), session=0)
    run.get("/h/e", None)
    report = run.check()
    assert report.ok, report.describe(run.recorder.operations)
    # ephemerals and plain reads are left to this checker
    assert all(call.key != "/h/e" for call in linearizability_calls(run.recorder.operations))


# --- watches ------------------------------------------------------------------------------

CHANGED, CREATED, DELETED = 3, 1, 2


def watched_run() -> tuple[Run, WatchRecord, Operation]:
    """A data watch on /h/a registered by a read at its create; a set fires it; then a
    read on the session at the set's zxid."""
    run = Run()
    a = run.create("/h/a", b"a1")
    registering = run.get("/h/a", (b"a1", 0, a.zxid))  # type: ignore[arg-type]
    registering.seq = 1
    s = run.set("/h/a", b"a2", version=0, new_version=1, session=OTHER)
    later = run.get("/h/a", (b"a2", 1, s.zxid))  # type: ignore[arg-type]
    later.seq = 3
    watch = WatchRecord(watch_id=0, process=2, session_id=SESSION, kind="data", path="/h/a", zxid=a.zxid or 0, seq=1)
    watch.events.append((CHANGED, "/h/a", s.zxid or 0, 2))
    return run, watch, s


def test_a_watch_fired_for_its_change_passes() -> None:
    run, watch, _s = watched_run()
    missing = WatchRecord(watch_id=1, process=2, session_id=SESSION, kind="exist", path="/h/b", zxid=watch.zxid, seq=1)
    b = run.create("/h/b", b"b1", session=OTHER)
    missing.events.append((CREATED, "/h/b", b.zxid or 0, 4))
    report = run.check(watches=[watch, missing])
    assert report.ok, report.describe(run.recorder.operations)
    assert report.stats["watches fired as due"] == 2


def test_a_watch_that_never_fires_is_caught_once_its_session_saw_the_change() -> None:
    run, watch, _s = watched_run()
    watch.events.clear()
    assert kinds(run.check(watches=[watch])) == ["watch"]
    # without a later reply on the session, the session may have ended before delivery
    run.recorder.operations[-1].seq = None
    report = run.check(watches=[watch])
    assert report.ok and report.stats["watches due, session over before delivery"] == 1


def test_a_watch_firing_after_a_later_reply_is_caught() -> None:
    run, watch, s = watched_run()
    watch.events[0] = (CHANGED, "/h/a", s.zxid or 0, 5)
    assert kinds(run.check(watches=[watch])) == ["watch"]


def test_a_watch_firing_twice_is_caught() -> None:
    run, watch, s = watched_run()
    watch.events.append((CHANGED, "/h/a", s.zxid or 0, 2))
    assert "fired 2 times" in str(run.check(watches=[watch]).violations[0])


def test_a_watch_firing_with_the_wrong_zxid_or_type_is_caught() -> None:
    run, watch, s = watched_run()
    watch.events[0] = (CHANGED, "/h/a", (s.zxid or 0) + 1, 2)
    assert kinds(run.check(watches=[watch])) == ["watch"]
    watch.events[0] = (DELETED, "/h/a", s.zxid or 0, 2)
    assert kinds(run.check(watches=[watch])) == ["watch"]


def test_a_watch_firing_without_a_change_is_caught() -> None:
    run = Run()
    a = run.create("/h/a", b"a1")
    watch = WatchRecord(watch_id=0, process=2, session_id=SESSION, kind="data", path="/h/a", zxid=a.zxid or 0)
    assert run.check(watches=[watch]).ok  # not due, not fired
    watch.events.append((CHANGED, "/h/a", a.zxid or 0, None))
    assert kinds(run.check(watches=[watch])) == ["watch"]


def test_a_watch_replayed_after_a_reconnect_may_carry_a_later_zxid_and_the_net_change() -> None:
    run, watch, _s = watched_run()
    deleted = run.delete("/h/a")
    run.recorder.operations[-2].seq = None  # the read came back on the old connection, before it
    watch.reconnected = True
    watch.events[0] = (DELETED, "/h/a", (deleted.zxid or 0) + 0, 2)
    assert run.check(watches=[watch]).ok
    watch.reconnected = False
    assert kinds(run.check(watches=[watch])) == ["watch"]


def test_an_exist_watch_over_a_reconnect_may_miss_a_create_and_delete_while_away() -> None:
    run = Run()
    registering = run.get("/h/b", None)
    registering.seq = 1
    watch = WatchRecord(
        watch_id=0, process=2, session_id=SESSION, kind="exist", path="/h/b", zxid=registering.zxid or 0, seq=1
    )
    run.create("/h/b", b"b1", session=OTHER)
    run.delete("/h/b")
    seen = run.get("/h/b", None)
    seen.seq = 2
    again = run.create("/h/b", b"b2", session=OTHER)
    watch.events.append((CREATED, "/h/b", again.zxid or 0, 3))
    assert kinds(run.check(watches=[watch])) == ["watch"]  # connected all along: the first create was due
    watch.reconnected = True
    report = run.check(watches=[watch])
    assert report.ok, report.describe(run.recorder.operations)


def test_a_data_watch_replayed_after_the_node_was_deleted_and_recreated_reports_a_data_change() -> None:
    # ZooKeeper's SetWatches replay looks only at the node now: it exists with a newer
    # mzxid, so the watch fires NODE_DATA_CHANGED at the server's zxid, though the first
    # change after the registration was a delete (and then a create).
    run = Run()
    a = run.create("/h/a", b"a1")
    registering = run.get("/h/a", (b"a1", 0, a.zxid))  # type: ignore[arg-type]
    registering.seq = 1
    watch = WatchRecord(watch_id=0, process=2, session_id=SESSION, kind="data", path="/h/a", zxid=a.zxid or 0, seq=1)
    run.delete("/h/a")
    again = run.create("/h/a", b"a2", session=OTHER)
    watch.reconnected = True
    watch.events.append((CHANGED, "/h/a", again.zxid or 0, 2))
    report = run.check(watches=[watch])
    assert report.ok, report.describe(run.recorder.operations)
    watch.reconnected = False  # on one connection the delete was due, and came first
    assert kinds(run.check(watches=[watch])) == ["watch"]
