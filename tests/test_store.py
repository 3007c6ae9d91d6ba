"""The store against real databases: a SQLite file and the PostgreSQL at $AOIFLOW_TEST_PG_URL
(each test in a fresh schema; see the ``store_url`` fixture in conftest.py)."""

from __future__ import annotations

import csv
import io
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from aoiflow.service.store import (
    AlertRecord,
    InspectionFilter,
    InspectionRecord,
    ModelVersionRecord,
    Store,
    StoreUnavailable,
)
from aoiflow.service.store.engine import alembic_config
from aoiflow.service.store.tables import Base

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def inspection(**changes) -> InspectionRecord:
    values = {"source": "upload", "file_name": "f.png", "a": 0.1, "r": 0.2, "l": 0.3, "threshold": 0.5,
              "decision": "normal", "verdict": "ok", "model_version": "g1", "created_at": T0}
    return InspectionRecord(**{**values, **changes})


def race(n: int, call) -> list:
    """``call(i)`` from n threads released together."""
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.fixture
def store(store_url: str):
    with Store(store_url) as s:
        yield s


# -- inspections -----------------------------------------------------------------------------

def test_every_field_round_trips(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    full = inspection(
        created_at=datetime(2025, 3, 1, 10, 30, 15, 123456, tzinfo=plus2), source="watch",
        file_name="line 3/ünïcode.png", a=1.25, r=-0.5, l=3e-7, threshold=0.75, decision="anomalous",
        verdict="defect:scratch", kind="scratch", confidence=0.875,
        regions=[{"box": [1, 2, 30, 40], "score": 0.9, "label": None}, {"box": [5, 5, 6, 6], "nested": {"k": [1]}}],
        supervised_version="s2", image_path="/img/a.png", map_path="/img/a_map.png",
        overlay_path="/img/a_overlay.png", timings_ms={"preprocess": 1.5, "model": 12.0},
        descriptor=[0.25, -1.0, 3.5], review_status="corrected", review_label="dent", reviewed_by="ana",
        reviewed_at=datetime(2025, 3, 2, 1, 2, 3, 4, tzinfo=UTC))
    bare = inspection(verdict="unknown_anomaly", decision="anomalous")
    full_id, bare_id = store.add_inspections([full, bare])

    got = store.get_inspection(full_id)
    assert got == InspectionRecord(**{**full.__dict__, "id": full_id})
    assert got.created_at.tzinfo == UTC and got.created_at.hour == 8  # 10:30+02:00 kept as 08:30 UTC
    assert got.reviewed_at == full.reviewed_at and got.reviewed_at.tzinfo == UTC
    got_bare = store.get_inspection(bare_id)
    assert got_bare == InspectionRecord(**{**bare.__dict__, "id": bare_id})
    assert (got_bare.kind, got_bare.confidence, got_bare.descriptor, got_bare.reviewed_at) == (None, None, None, None)
    assert got_bare.regions == [] and got_bare.timings_ms == {}
    assert store.get_inspection(bare_id + 1000) is None
    assert full.id is None  # the caller's record is not changed


def test_records_check_their_values() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        inspection(created_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="verdict"):
        inspection(verdict="scratch")
    with pytest.raises(ValueError, match="decision"):
        inspection(decision="maybe")
    with pytest.raises(ValueError, match="NaN"):
        inspection(a=float("nan"))
    with pytest.raises(ValueError, match="since"):
        InspectionFilter(since=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="kind"):
        ModelVersionRecord(version="v", kind="yolo", path="p")


def test_a_failed_write_stores_nothing(store: Store) -> None:
    bad = inspection(regions=[{"box": object()}])
    with pytest.raises(Exception, match="JSON"):
        store.add_inspections([inspection(), inspection(), bad])
    assert store.count_inspections() == 0
    with pytest.raises(Exception, match="JSON"):  # NaN inside JSON: refused alike on both databases
        store.add_inspection(inspection(timings_ms={"model": float("nan")}))
    assert store.count_inspections() == 0
    store.add_inspection(inspection())  # and the store goes on working
    assert store.count_inspections() == 1


def _filter_fixture(store: Store) -> dict[str, int]:
    rows = {
        "ok_old": inspection(created_at=T0, a=0.1, source="watch"),
        "scratch": inspection(created_at=T0 + timedelta(hours=1), a=0.9, decision="anomalous",
                              verdict="defect:scratch", kind="scratch", model_version="g2"),
        "dent": inspection(created_at=T0 + timedelta(hours=2), a=0.8, decision="anomalous",
                           verdict="defect:dent", kind="dent"),
        "unknown": inspection(created_at=T0 + timedelta(hours=3), a=0.7, decision="anomalous",
                              verdict="unknown_anomaly", review_status="rejected"),
        "ok_new": inspection(created_at=T0 + timedelta(hours=4), a=0.0, review_status="confirmed"),
    }
    return dict(zip(rows, store.add_inspections(list(rows.values()))))


FILTER_CASES = [
    (InspectionFilter(), {"ok_old", "scratch", "dent", "unknown", "ok_new"}),
    (InspectionFilter(since=T0 + timedelta(hours=1)), {"scratch", "dent", "unknown", "ok_new"}),
    (InspectionFilter(until=T0 + timedelta(hours=1)), {"ok_old"}),  # until is exclusive
    (InspectionFilter(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=3)), {"scratch", "dent"}),
    (InspectionFilter(verdicts=["ok", "unknown_anomaly"]), {"ok_old", "unknown", "ok_new"}),
    (InspectionFilter(verdicts=[]), set()),
    (InspectionFilter(kinds=["dent", "scratch"]), {"scratch", "dent"}),
    (InspectionFilter(decision="normal"), {"ok_old", "ok_new"}),
    (InspectionFilter(min_a=0.75), {"scratch", "dent"}),
    (InspectionFilter(max_a=0.1), {"ok_old", "ok_new"}),
    (InspectionFilter(min_a=0.0, max_a=0.0), {"ok_new"}),
    (InspectionFilter(model_version="g2"), {"scratch"}),
    (InspectionFilter(source="watch"), {"ok_old"}),
    (InspectionFilter(review_status="rejected"), {"unknown"}),
    (InspectionFilter(unreviewed_only=True), {"ok_old", "scratch", "dent"}),
    (InspectionFilter(unreviewed_only=True, decision="anomalous", since=T0 + timedelta(hours=2)), {"dent"}),
    (InspectionFilter(since=datetime(2025, 3, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))),  # = 09:00 UTC
     {"scratch", "dent", "unknown", "ok_new"}),
]


def test_filters(store: Store) -> None:
    # One store for all cases (a fresh database per case would double the module's time);
    # every mismatch is reported, not just the first.
    ids = _filter_fixture(store)
    names = {v: k for k, v in ids.items()}
    wrong = []
    for where, expected in FILTER_CASES:
        found = {names[r.id] for r in store.query_inspections(where)}
        count = store.count_inspections(where)
        if found != expected or count != len(expected):
            wrong.append(f"{where}: found {sorted(found)} (count {count}), expected {sorted(expected)}")
    assert not wrong, "\n".join(wrong)


def test_pages_cover_every_row_once_in_order(store: Store) -> None:
    # Pairs of equal times: the id must break the tie or pages would skip or repeat rows.
    ids = store.add_inspections([inspection(created_at=T0 + timedelta(minutes=i // 2)) for i in range(7)])
    newest = [r.id for p in range(3) for r in store.query_inspections(limit=3, offset=3 * p)]
    assert newest == ids[::-1]
    oldest = [r.id for p in range(4) for r in store.query_inspections(limit=2, offset=2 * p, newest_first=False)]
    assert oldest == ids
    assert store.query_inspections(limit=0) == []
    assert store.query_inspections(offset=7) == []
    with pytest.raises(ValueError):
        store.query_inspections(limit=-1)


def test_review(store: Store) -> None:
    i = store.add_inspection(inspection(decision="anomalous", verdict="anomaly"))
    before = datetime.now(UTC)
    assert store.review_inspection(i, "corrected", label="scratch", by="ana")
    got = store.get_inspection(i)
    assert (got.review_status, got.review_label, got.reviewed_by) == ("corrected", "scratch", "ana")
    assert before - timedelta(seconds=1) <= got.reviewed_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert store.count_inspections(InspectionFilter(unreviewed_only=True)) == 0
    assert not store.review_inspection(i + 99, "confirmed")
    with pytest.raises(ValueError, match="status"):
        store.review_inspection(i, "maybe")


def test_stats_known_answer(store: Store) -> None:
    h1, h2 = T0, T0 + timedelta(hours=1)
    store.add_inspections(
        [inspection(created_at=h1 + timedelta(minutes=m)) for m in (0, 10, 59)]
        + [inspection(created_at=h1 + timedelta(minutes=30), decision="anomalous", verdict="defect:scratch",
                      kind="scratch")]
        + [inspection(created_at=h2 + timedelta(minutes=m)) for m in (5, 50)]
        + [inspection(created_at=h2 + timedelta(hours=1))])  # outside [since, until)
    hours = store.stats(since=h1, until=h2 + timedelta(hours=1))
    assert hours == [
        {"bucket": h1, "total": 4, "ok": 3, "anomaly": 1, "defects": {"scratch": 1}, "yield": 0.75},
        {"bucket": h2, "total": 2, "ok": 2, "anomaly": 0, "defects": {}, "yield": 1.0},
    ]
    assert hours[0]["bucket"].tzinfo == UTC
    days = store.stats(bucket="day")
    assert [(d["bucket"], d["total"], d["ok"], d["yield"]) for d in days] == [(T0.replace(hour=0), 7, 6, 6 / 7)]
    assert store.stats(since=T0 - timedelta(days=2), until=T0 - timedelta(days=1)) == []
    with pytest.raises(ValueError, match="bucket"):
        store.stats(bucket="week")


def test_export_csv(store: Store) -> None:
    ids = store.add_inspections([
        inspection(created_at=T0, file_name='odd, "name".png'),
        inspection(created_at=T0 + timedelta(minutes=1), decision="anomalous", verdict="defect:dent", kind="dent",
                   regions=[{"box": [1, 2, 3, 4]}], descriptor=[0.5])])
    buffer = io.StringIO(newline="")
    assert store.export_csv(InspectionFilter(), buffer) == 2
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue(), newline="")))
    assert list(rows[0])[:3] == ["id", "created_at", "source"]
    assert [int(r["id"]) for r in rows] == ids
    assert rows[0]["file_name"] == 'odd, "name".png' and rows[0]["kind"] == "" and rows[0]["descriptor"] == ""
    assert datetime.fromisoformat(rows[1]["created_at"]) == T0 + timedelta(minutes=1)
    assert rows[1]["verdict"] == "defect:dent" and rows[1]["regions"] == '[{"box": [1, 2, 3, 4]}]'
    only_ok = io.StringIO()
    assert store.export_csv(InspectionFilter(verdicts=["ok"]), only_ok) == 1
    assert len(only_ok.getvalue().splitlines()) == 2


def test_descriptor_samples_known_answer(store: Store) -> None:
    # (verdict, decision, review): 0 5 7 pass; 1 named by the model, 3 4 by a review; 2 6 neither.
    parts = [("ok", "normal", None), ("defect:scratch", "anomalous", None),
             ("unknown_anomaly", "anomalous", None), ("unknown_anomaly", "anomalous", "rejected"),
             ("ok", "normal", "confirmed"), ("ok", "normal", None), ("anomaly", "anomalous", None),
             ("ok", "normal", None)]
    store.add_inspections([inspection(created_at=T0 + timedelta(minutes=i), verdict=v, decision=d, review_status=r,
                                      descriptor=[float(i)]) for i, (v, d, r) in enumerate(parts)])

    def order(labelled: int, passing: int) -> list[float]:
        return [s.descriptor[0] for s in store.descriptor_samples(labelled, passing)]

    assert order(5000, 500) == [4.0, 3.0, 1.0, 7.0, 5.0, 0.0]  # newest first within each
    assert order(2, 1) == [4.0, 3.0, 7.0]
    sample = store.descriptor_samples(1, 0)[0]
    assert (sample.decision, sample.verdict, sample.review_status) == ("normal", "ok", "confirmed")


# -- alerts ----------------------------------------------------------------------------------

def alert(key: str = "drift:g1:2025-03-01T08", **changes) -> AlertRecord:
    values = {"key": key, "rule": "drift", "severity": "warning", "message": "A rose", "kind": "scratch",
              "evidence": [3, 1, 2], "details": {"mean_a": 0.8, "window": 50}, "created_at": T0}
    return AlertRecord(**{**values, **changes})


def test_alert_is_raised_once_and_round_trips(store: Store) -> None:
    first = store.add_alert(alert())
    assert isinstance(first, int)
    assert store.add_alert(alert(message="again")) is None
    assert store.list_alerts() == [alert(id=first)]
    second = store.add_alert(alert("other", kind=None, created_at=T0 + timedelta(minutes=5)))
    assert [a.id for a in store.list_alerts()] == [second, first]  # newest first
    assert [a.id for a in store.list_alerts(limit=1)] == [second]


def test_alert_race_raises_once(store: Store) -> None:
    results = race(8, lambda i: store.add_alert(alert("race", message=f"thread {i}")))
    assert sum(r is not None for r in results) == 1
    assert len(store.list_alerts()) == 1


def test_acknowledge_alert(store: Store) -> None:
    a, b = store.add_alert(alert("a")), store.add_alert(alert("b"))
    assert store.acknowledge_alert(a, by="ana")
    assert not store.acknowledge_alert(a, by="bob")  # the first acknowledgement stays
    assert not store.acknowledge_alert(9999, by="ana")
    assert [x.id for x in store.list_alerts(unacknowledged_only=True)] == [b]
    acked = next(x for x in store.list_alerts() if x.id == a)
    assert acked.acknowledged_by == "ana" and acked.acknowledged_at.tzinfo == UTC


# -- processed files -------------------------------------------------------------------------

def test_claim_file_exactly_once(store_url: str, store: Store) -> None:
    assert store.claim_file("/in/a.png", 100, 1_700_000_000_123_456_789)
    assert not store.claim_file("/in/a.png", 100, 1_700_000_000_123_456_789)
    assert store.claim_file("/in/a.png", 101, 1_700_000_000_123_456_789)  # rewritten: new work
    # Eight threads on one store, and a second store as another process would have it.
    with Store(store_url) as other:
        results = race(8, lambda i: (store if i % 2 else other).claim_file("/in/race.png", 5, 7))
    assert results.count(True) == 1


def test_unfinished_files_survive_a_crash(store_url: str) -> None:
    store = Store(store_url)
    inspection_id = store.add_inspection(inspection())
    for name in ("a", "b", "c"):
        assert store.claim_file(f"/in/{name}.png", 10, 20)
    store.finish_file("/in/a.png", 10, 20, inspection_id, None)
    store.finish_file("/in/c.png", 10, 20, None, "unreadable image")
    store.close()  # "crash" while b was in work

    with Store(store_url) as reopened:
        left = reopened.unfinished_files()
        assert [(f.path, f.size, f.mtime_ns, f.finished_at) for f in left] == [("/in/b.png", 10, 20, None)]
        assert left[0].claimed_at.tzinfo == UTC
        assert reopened.is_processed("/in/a.png", 10, 20) and reopened.is_processed("/in/c.png", 10, 20)
        assert not reopened.is_processed("/in/b.png", 10, 20) and not reopened.is_processed("/in/a.png", 11, 20)
        assert not reopened.claim_file("/in/b.png", 10, 20)  # still claimed: redone from the list
        reopened.finish_file("/in/b.png", 10, 20, inspection_id, None)
        assert reopened.unfinished_files() == []
        with pytest.raises(LookupError, match="never claimed"):
            reopened.finish_file("/in/z.png", 1, 2, None, None)
        reopened.claim_file("/in/d.png", 1, 2)
        with pytest.raises(sa.exc.IntegrityError):  # foreign keys are enforced on SQLite too
            reopened.finish_file("/in/d.png", 1, 2, inspection_id + 999, None)
        assert [f.path for f in reopened.unfinished_files()] == ["/in/d.png"]


def test_a_files_inspection_and_its_finish_are_one_transaction(store: Store) -> None:
    assert store.claim_file("/in/a.png", 10, 20)
    inspection_id = store.add_file_inspection(inspection(file_name="a.png"), "/in/a.png", 10, 20)
    assert store.get_inspection(inspection_id).file_name == "a.png"
    assert store.is_processed("/in/a.png", 10, 20) and store.unfinished_files() == []
    with pytest.raises(LookupError, match="never claimed"):
        store.add_file_inspection(inspection(file_name="z.png"), "/in/z.png", 1, 2)
    assert store.count_inspections() == 1  # the failed finish took its inspection with it
    store.ping()
    assert not store.has_alert("input:1")
    store.add_alert(AlertRecord(key="input:1", rule="input_health", severity="warning", message="m"))
    assert store.has_alert("input:1")


# -- model versions --------------------------------------------------------------------------

def test_register_and_list_models(store: Store) -> None:
    first = store.register_model("g1", "ganomaly", Path("/runs/g1/model.pt"), {"image_size": 128})
    assert (first.version, first.kind, first.path, first.details) == ("g1", "ganomaly", "/runs/g1/model.pt",
                                                                      {"image_size": 128})
    assert store.register_model("g1", "ganomaly", "/elsewhere") == first  # idempotent: the first stays
    store.register_model("s1", "supervised", "/runs/s1")
    assert [m.version for m in store.list_models()] == ["s1", "g1"]
    with pytest.raises(ValueError, match="kind"):
        store.register_model("x", "yolo", "/p")


# -- schema, migrations ----------------------------------------------------------------------

def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=NullPool)


def _revision(url: str) -> list[str]:
    engine = _engine(url)
    with engine.connect() as c:
        versions = [r[0] for r in c.exec_driver_sql("SELECT version_num FROM alembic_version")]
    engine.dispose()
    return versions


def _schema_differences(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = _engine(url)
    with engine.connect() as c:
        diffs = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    return diffs


def test_migrates_a_fresh_and_an_existing_database(store_url: str) -> None:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with Store(store_url) as fresh:
        i = fresh.add_inspection(inspection())
    assert _revision(store_url) == [head]
    assert _schema_differences(store_url) == []  # the migrations make exactly the models' tables
    with Store(store_url) as again:  # already at head: opens, upgrades nothing, keeps the rows
        assert again.get_inspection(i).id == i
    assert _revision(store_url) == [head]


def _indexes(url: str) -> dict[str, tuple[list[str], str]]:
    """The inspections table's indexes: {name: (columns, partial index WHERE or "")}."""
    engine = _engine(url)
    found = sa.inspect(engine).get_indexes("inspections")
    engine.dispose()
    where = lambda options: options.get("sqlite_where", options.get("postgresql_where", ""))  # noqa: E731
    return {ix["name"]: (ix["column_names"], str(where(ix.get("dialect_options", {})))) for ix in found}


SAMPLE_INDEXES = {"ix_inspections_labelled", "ix_inspections_verdict_created_at_id"}  # revision 0003


def test_descriptor_sample_indexes_migrate_both_ways(store_url: str) -> None:
    from alembic import command

    Store(store_url).close()
    indexes = _indexes(store_url)
    labelled_columns, where = indexes["ix_inspections_labelled"]
    assert labelled_columns == ["created_at", "id"] and "defect:%" in where and "review_status" in where
    assert indexes["ix_inspections_verdict_created_at_id"] == (["verdict", "created_at", "id"], "")
    config = alembic_config(sa.make_url(store_url))
    command.downgrade(config, "0002")
    assert _revision(store_url) == ["0002"]
    assert SAMPLE_INDEXES.isdisjoint(_indexes(store_url)) and "ix_inspections_created_at" in _indexes(store_url)
    command.upgrade(config, "head")
    assert SAMPLE_INDEXES <= set(_indexes(store_url)) and _schema_differences(store_url) == []


def _sample_plans(store: Store) -> list[str]:
    """The query plan of each statement ``descriptor_samples`` runs, as one line of text each.
    On PostgreSQL sequential scans are off, so that a tiny table shows which indexes are usable."""
    statements: list[tuple[str, object]] = []

    def keep(conn, cursor, statement: str, params: object, *rest: object) -> None:
        if statement.lstrip().startswith("SELECT"):
            statements.append((statement, params))

    sa.event.listen(store._engine, "before_cursor_execute", keep)
    try:
        store.descriptor_samples()
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", keep)
    with store._engine.connect() as c:
        if c.dialect.name == "sqlite":
            return [" / ".join(r[-1] for r in c.exec_driver_sql(f"EXPLAIN QUERY PLAN {q}", p)) for q, p in statements]
        c.exec_driver_sql("SET enable_seqscan = off")
        return [" / ".join(r[0] for r in c.exec_driver_sql(f"EXPLAIN {q}", p)) for q, p in statements]


def test_descriptor_samples_read_their_indexes(store: Store) -> None:
    store.add_inspections([inspection(verdict="defect:scratch", decision="anomalous", descriptor=[1.0]),
                           inspection(descriptor=[0.0])])
    labelled, passing = _sample_plans(store)
    if store._engine.dialect.name == "sqlite":  # known answer: no table scan, no sort (no ANALYZE run)
        assert labelled == "SCAN inspections USING INDEX ix_inspections_labelled"
        assert passing == "SEARCH inspections USING INDEX ix_inspections_verdict_created_at_id (verdict=?)"
    else:  # the query's WHERE implies the partial index's (PostgreSQL picks by statistics otherwise)
        assert "ix_inspections_labelled" in labelled


def test_two_stores_opening_a_fresh_database_together(store_url: str) -> None:
    stores = race(3, lambda i: Store(store_url))
    stores[0].add_inspection(inspection())
    assert [s.count_inspections() for s in stores] == [1, 1, 1]
    for s in stores:
        s.close()


def test_a_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    Store(store_url).close()
    engine = _engine(store_url)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_future'")
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer aoiflow"):
        Store(store_url)


def test_unsupported_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file path"):
        Store("sqlite://")
    with pytest.raises(ValueError, match="sqlite and postgresql"):
        Store("mysql://u:p@localhost/db")


# -- databases that are not there, or go away and come back ----------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sqlite_unreachable_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "no such folder" / "aoiflow.db"
    with pytest.raises(StoreUnavailable, match="no such folder"):
        Store(f"sqlite:///{path}")


def test_postgresql_unreachable_names_the_database_not_the_password(pg_url: str) -> None:
    base = sa.make_url(pg_url)
    closed = base.set(port=_closed_port(), password="s3cret-pw")
    with pytest.raises(StoreUnavailable) as caught:
        Store(closed)
    message = str(caught.value)
    assert f"127.0.0.1:{closed.port}/{base.database}" in message and "***" in message
    assert "s3cret-pw" not in message
    missing = base.set(database=f"aoiflow_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreUnavailable, match=missing.database) as caught:
        Store(missing)
    assert f":{base.password}@" not in str(caught.value)


def test_sqlite_file_goes_away_and_comes_back(tmp_path: Path) -> None:
    folder = tmp_path / "line"
    store = Store.sqlite(folder / "aoiflow.db")
    i = store.add_inspection(inspection())
    folder.rename(tmp_path / "moved")  # disk unmounted, share gone...
    with pytest.raises(StoreUnavailable, match="aoiflow.db"):
        store.get_inspection(i)
    with pytest.raises(StoreUnavailable):
        store.add_inspection(inspection())
    assert not folder.exists()  # no empty database was made in its place
    (tmp_path / "moved").rename(folder)
    assert store.get_inspection(i).id == i
    assert store.add_inspection(inspection()) == i + 1
    store.close()


def test_postgresql_dropped_connections_are_replaced(pg_schema_url: str) -> None:
    with Store(pg_schema_url) as store:
        i = store.add_inspection(inspection())
        name = sa.make_url(pg_schema_url).query["application_name"]
        admin = _engine(pg_schema_url)
        with admin.connect() as c:  # the server drops the store's pooled connections (restart, failover)
            killed = c.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       "WHERE application_name = :n AND pid <> pg_backend_pid()"), {"n": name})
            assert killed.scalar_one() >= 1
        admin.dispose()
        assert store.get_inspection(i).id == i  # pool_pre_ping reconnects; no error reaches the caller


def test_postgresql_goes_away_and_comes_back(pg_url: str) -> None:
    base = sa.make_url(pg_url)
    name = f"aoiflow_away_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def run(sql: str) -> None:
        with admin.connect() as c:
            c.exec_driver_sql(sql)

    run(f'CREATE DATABASE "{name}"')
    try:
        store = Store(base.set(database=name))
        i = store.add_inspection(inspection())
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        run(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        with pytest.raises(StoreUnavailable, match=name) as caught:
            store.get_inspection(i)
        assert f":{base.password}@" not in str(caught.value)
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert store.get_inspection(i).id == i
        store.close()
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
