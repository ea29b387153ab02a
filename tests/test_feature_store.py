"""FeatureStore contract (both implementations) and the SQLite store's durability and concurrency."""
from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmrec.feature_store import (
    STORE_FILE,
    FeatureStore,
    MemoryFeatureStore,
    SqliteFeatureStore,
    open_feature_store,
)
from mmrec.item_codec import CorruptRecord
from mmrec.settings import Settings
from tests.synthetic_items import OTHER_VERSION, VERSION, make_item, make_items, same_item

TINY = ((2, 2, 2),)  # small maps where only the count of items matters
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], FeatureStore]]:
    """Opens the implementation under test (sqlite: the same file on every call)."""
    opened: list[FeatureStore] = []

    def make() -> FeatureStore:
        store: FeatureStore
        if request.param == "memory":
            store = MemoryFeatureStore()
        else:
            store = SqliteFeatureStore(tmp_path / STORE_FILE)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], FeatureStore]) -> FeatureStore:
    return make_store()


# --- contract: both implementations --------------------------------------------------------------

def test_is_a_feature_store(store: FeatureStore) -> None:
    assert isinstance(store, FeatureStore)


def test_put_get_round_trip(store: FeatureStore) -> None:
    item = make_item("a", seed=1, media_type="video")
    store.put(item)
    got = store.get("a")
    assert got is not None and same_item(got, item)
    assert store.get("missing") is None
    assert "a" in store and "missing" not in store and 3 not in store


def test_put_many_len_ids_in_insertion_order(store: FeatureStore) -> None:
    items = make_items(5, shapes=TINY)
    store.put_many(reversed(items))  # any iterable
    assert len(store) == 5
    assert store.ids() == [i.media_id for i in reversed(items)]
    store.put_many([])
    assert len(store) == 5


def test_upsert_replaces_in_place(store: FeatureStore) -> None:
    store.put_many(make_items(3, shapes=TINY))
    new = replace(make_item("m0000001", seed=99, shapes=((2, 3, 3),)), created_at=1_800_000_000.5)
    store.put(new)
    assert len(store) == 3
    assert store.ids() == ["m0000000", "m0000001", "m0000002"]
    got = store.get("m0000001")
    assert got is not None and same_item(got, new)


def test_upsert_may_change_version(store: FeatureStore) -> None:
    store.put(make_item("a"))
    store.put(make_item("a", version=OTHER_VERSION))
    assert store.versions() == {OTHER_VERSION: 1}
    assert store.ids(VERSION) == [] and store.ids(OTHER_VERSION) == ["a"]


def test_get_many(store: FeatureStore) -> None:
    items = make_items(600, shapes=TINY)  # more than one IN (...) chunk
    store.put_many(items)
    wanted = [i.media_id for i in items[::-1]] + ["nope", items[0].media_id]
    got = store.get_many(wanted)
    assert set(got) == {i.media_id for i in items}
    assert same_item(got[items[7].media_id], items[7])
    assert store.get_many([]) == {}


def test_version_filters(store: FeatureStore) -> None:
    ours = make_items(4, shapes=TINY)
    theirs = make_items(3, start=100, shapes=TINY, version=OTHER_VERSION)
    store.put_many([ours[0], theirs[0], ours[1], ours[2], theirs[1], theirs[2], ours[3]])
    assert store.versions() == {VERSION: 4, OTHER_VERSION: 3}
    assert store.ids(VERSION) == [i.media_id for i in ours]
    assert store.ids(OTHER_VERSION) == [i.media_id for i in theirs]
    assert [i.media_id for i in store.iter_items(OTHER_VERSION)] == [i.media_id for i in theirs]
    assert len(store.ids()) == len(store) == 7
    assert store.nbytes() == store.nbytes(VERSION) + store.nbytes(OTHER_VERSION)
    assert store.nbytes(replace(VERSION, projection="unknown")) == 0


def test_iter_items_streams_everything_in_order(store: FeatureStore) -> None:
    items = make_items(700, shapes=TINY)  # several pages
    store.put_many(items)
    streamed = list(store.iter_items())
    assert [i.media_id for i in streamed] == [i.media_id for i in items]
    assert all(same_item(a, b) for a, b in zip(streamed[::97], items[::97]))
    assert list(store.iter_items(OTHER_VERSION)) == []


def test_delete(store: FeatureStore) -> None:
    store.put_many(make_items(3, shapes=TINY))
    assert store.delete("m0000001") is True
    assert store.delete("m0000001") is False
    assert store.ids() == ["m0000000", "m0000002"] and len(store) == 2
    assert store.get("m0000001") is None


def test_invalid_item_in_batch_stores_nothing(store: FeatureStore) -> None:
    good = make_items(3, shapes=TINY)
    bad = replace(good[1], maps=(torch.zeros(2, 2, 2),))  # float32
    with pytest.raises(ValueError, match="float16"):
        store.put_many([good[0], bad, good[2]], checkpoints={"t/0": 3})
    assert len(store) == 0 and store.checkpoints() == {}


def test_checkpoints_are_stored_with_the_items(store: FeatureStore) -> None:
    store.put_many(make_items(2, shapes=TINY), checkpoints={"t/0": 2, "t/1": 7})
    store.put_many(make_items(1, start=2, shapes=TINY), checkpoints={"t/0": 3})
    assert store.checkpoints() == {"t/0": 3, "t/1": 7} and len(store) == 3


def test_returned_items_do_not_alias_the_store(store: FeatureStore) -> None:
    store.put(make_item("a"))
    first = store.get("a")
    assert first is not None
    first.maps[0].zero_()
    again = store.get("a")
    assert again is not None and same_item(again, make_item("a"))


def test_nbytes_is_the_encoded_record_size(store: FeatureStore) -> None:
    store.put_many(make_items(10))
    per_item = store.nbytes() / len(store)
    assert 7056 < per_item <= 7056 + 600


def test_closed_store_refuses_calls(store: FeatureStore) -> None:
    store.put(make_item("a", shapes=TINY))
    store.close()
    store.close()  # idempotent
    for call in (lambda: store.get("a"), lambda: len(store), lambda: list(store.iter_items()),
                 lambda: store.put(make_item("b", shapes=TINY)), store.ids):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_context_manager_closes(store: FeatureStore) -> None:
    with store as s:
        s.put(make_item("a", shapes=TINY))
    with pytest.raises(ValueError, match="closed"):
        store.get("a")


# --- SQLite: durability ----------------------------------------------------------------------------

def test_sqlite_survives_close_and_reopen(tmp_path: Path) -> None:
    items = make_items(20)
    with SqliteFeatureStore(tmp_path / "f.sqlite3") as store:
        store.put_many(items)
        store.delete("m0000003")
    with SqliteFeatureStore(tmp_path / "f.sqlite3") as store:
        assert len(store) == 19
        got = store.get("m0000019")
        assert got is not None and same_item(got, items[19])
        conn = store._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


_KILLED_WRITER = """
import os, signal, sys
from mmrec.feature_store import SqliteFeatureStore
from tests.synthetic_items import make_items
store = SqliteFeatureStore(sys.argv[1])
store.put_many(make_items(40))
store.put(make_items(1, start=40)[0])
print("committed", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sqlite_survives_process_kill(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    run = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == -9 and run.stdout.strip() == "committed", run.stderr
    assert Path(f"{path}-wal").stat().st_size > 0  # the commits live in the WAL, never checkpointed
    with SqliteFeatureStore(path) as store:
        assert len(store) == 41
        got = store.get("m0000040")
        assert got is not None and same_item(got, make_item("m0000040", seed=40))


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    SqliteFeatureStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 7")
    with pytest.raises(ValueError, match="schema version 7"):
        SqliteFeatureStore(path)


def test_sqlite_corrupt_row_raises_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite3"
    with SqliteFeatureStore(path) as store:
        store.put(make_item("a"))
        store._conn().execute("UPDATE items SET record = substr(record, 1, 100) WHERE media_id = 'a'")
        with pytest.raises(CorruptRecord):
            store.get("a")


def test_open_feature_store_uses_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var" / "nested")
    with open_feature_store(settings) as store:
        store.put(make_item("a", shapes=TINY))
    assert (tmp_path / "var" / "nested" / STORE_FILE).exists()
    with open_feature_store(settings) as store:
        assert store.ids() == ["a"]


# --- SQLite: concurrency ---------------------------------------------------------------------------

def test_sqlite_write_from_another_thread_while_reading(tmp_path: Path) -> None:
    """An executor-style writer thread upserts while this (event-loop) thread reads: every read
    sees whole, committed items, and the final state is complete."""
    store = SqliteFeatureStore(tmp_path / "f.sqlite3")
    base = make_items(200, shapes=TINY)
    store.put_many(base)
    batches = [make_items(100, start=1000 + 100 * k, shapes=TINY) for k in range(6)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for batch in batches:
                store.put_many(batch)
                store.put_many([replace(i, created_at=i.created_at + 1) for i in base[:50]])  # upserts
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive() or reads == 0:
        ids = store.ids()
        assert len(ids) >= 200 and len(ids) % 100 == 0  # whole batches only
        got = store.get(ids[-1])
        assert got is not None and got.media_id == ids[-1]
        assert len(store.get_many(ids[:60])) == 60
        reads += 1
    thread.join()
    assert not errors
    assert len(store) == 800 and reads > 0
    streamed = {i.media_id: i for i in store.iter_items()}
    assert all(same_item(streamed[i.media_id], i) for b in batches for i in b)
    assert streamed["m0000000"].created_at == base[0].created_at + 1
    store.close()


def test_sqlite_two_writer_threads(tmp_path: Path) -> None:
    store = SqliteFeatureStore(tmp_path / "f.sqlite3")
    chunks = [make_items(100, start=100 * k, shapes=TINY) for k in range(8)]
    threads = [threading.Thread(target=lambda c=c: [store.put_many([i]) for i in c]) for c in chunks[:2]]
    threads += [threading.Thread(target=store.put_many, args=(c,)) for c in chunks[2:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 800
    store.close()


def test_sqlite_close_from_another_thread(tmp_path: Path) -> None:
    store = SqliteFeatureStore(tmp_path / "f.sqlite3")
    worker = threading.Thread(target=store.put, args=(make_item("a", shapes=TINY),))
    worker.start()
    worker.join()
    store.close()  # closes the worker thread's connection too
    with SqliteFeatureStore(tmp_path / "f.sqlite3") as again:
        assert again.ids() == ["a"]


def test_sqlite_reader_does_not_wait_for_an_open_write_transaction(tmp_path: Path) -> None:
    """WAL: while a writer thread holds its transaction open, reads on this thread return at once
    with the last committed state."""
    store = SqliteFeatureStore(tmp_path / "f.sqlite3")
    store.put(make_item("old", shapes=TINY))
    in_transaction, release = threading.Event(), threading.Event()

    def writer() -> None:
        conn = store._conn()
        with store._transaction(conn):
            conn.execute("DELETE FROM items WHERE media_id = 'old'")
            in_transaction.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert in_transaction.wait(10)
    try:
        assert store.ids() == ["old"] and len(store) == 1 and store.get("old") is not None
    finally:
        release.set()
        thread.join()
    assert store.ids() == []
    store.close()


def test_sqlite_connection_of_an_ended_thread_is_released(tmp_path: Path) -> None:
    store = SqliteFeatureStore(tmp_path / "f.sqlite3")
    for k in range(20):  # a thread per call must not pile up open connections
        t = threading.Thread(target=store.put, args=(make_item(f"t{k}", shapes=TINY),))
        t.start()
        t.join()
    gc.collect()
    assert len(store._connections) <= 2  # this thread's, plus at most one not yet collected
    assert len(store) == 20
    store.close()
