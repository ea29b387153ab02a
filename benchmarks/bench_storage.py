"""Storage numbers for docs/storage.md: bytes per item, write/read throughput, reads under writes.

    .venv/bin/python -m benchmarks.bench_storage [--items 10000]    (from the repository root)

Synthetic items at the default configuration (d = 8, N = 3, grids 14x14, 14x14, 7x7). The
concurrency part compares the store's connection-per-thread design with one shared connection
behind a lock, as an event-loop reader sees them while an executor thread writes.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mmrec.catalogue import Catalogue
from mmrec.feature_store import SqliteFeatureStore
from mmrec.features import ItemFeatures
from mmrec.item_codec import decode_item, encode_item
from tests.synthetic_items import VERSION, make_items


class SharedConnectionStore(SqliteFeatureStore):
    """The alternative design: one connection for all threads, every operation under one lock."""

    def __init__(self, path: Path) -> None:
        self._big_lock = threading.Lock()
        super().__init__(path)
        self._shared = super()._conn()

    def _conn(self) -> sqlite3.Connection:
        return getattr(self, "_shared", None) or super()._conn()

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:  # type: ignore[override]
        with self._big_lock, super()._transaction(conn):
            yield

    def get(self, media_id: str) -> ItemFeatures | None:
        with self._big_lock:  # decode outside the lock, as the store does
            row = self._shared.execute("SELECT record FROM items WHERE media_id = ?", (media_id,)).fetchone()
        return None if row is None else decode_item(row[0])


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    """Best wall time of `repeat` calls, seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def reads_under_writes(
    store: SqliteFeatureStore, ids: list[str], writes: list[list[ItemFeatures]]
) -> dict[str, float]:
    """get() latencies (ms) of a reader thread while a writer thread runs put_many batches."""
    latencies: list[float] = []
    done = threading.Event()

    def reader() -> None:
        rng = random.Random(0)
        while not done.is_set():
            t = time.perf_counter()
            store.get(rng.choice(ids))
            latencies.append((time.perf_counter() - t) * 1e3)

    thread = threading.Thread(target=reader)
    thread.start()
    t = time.perf_counter()
    for batch in writes:
        store.put_many(batch)
    write_s = time.perf_counter() - t
    done.set()
    thread.join()
    latencies.sort()
    return {
        "reads": len(latencies),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "max_ms": latencies[-1],
        "write_items_per_s": sum(len(b) for b in writes) / write_s,
    }


def directory_of_files(root: Path, items: list[ItemFeatures]) -> None:
    """The simplest alternative: one record file per item, written atomically (temp + fsync + rename)."""
    root.mkdir()
    t = time.perf_counter()
    for item in items[:1000]:
        tmp, final = root / f"{item.media_id}.tmp", root / f"{item.media_id}.item"
        with open(tmp, "wb") as f:
            f.write(encode_item(item))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    write_rate = 1000 / (time.perf_counter() - t)
    for item in items[1000:]:
        (root / f"{item.media_id}.item").write_bytes(encode_item(item))
    t = time.perf_counter()
    n = sum(1 for path in sorted(root.iterdir()) if decode_item(path.read_bytes()))
    read_rate = n / (time.perf_counter() - t)
    disk = sum(path.stat().st_blocks * 512 for path in root.iterdir())
    print(f"directory of files: write {write_rate:.0f} items/s (fsync each), read+decode {read_rate:.0f} items/s, "
          f"{disk / n:.0f} bytes/item on disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    items = make_items(args.items)
    batch = items[:1000]
    record = encode_item(items[0])
    print(f"record: {len(record)} bytes = {items[0].nbytes} fp16 maps + {len(record) - items[0].nbytes} header")
    records = [encode_item(i) for i in batch]
    print(f"codec: encode {timed(lambda: [encode_item(i) for i in batch]) * 1e3:.0f} us/item, "
          f"decode {timed(lambda: [decode_item(r) for r in records]) * 1e3:.0f} us/item")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.sqlite3"
        with SqliteFeatureStore(path) as store:
            fresh = []
            for start in range(0, len(items), 1000):
                t = time.perf_counter()
                store.put_many(items[start : start + 1000])
                fresh.append(1000 / (time.perf_counter() - t))
            upsert = 1000 / timed(lambda: store.put_many(batch))
            print(f"put_many(1000) new ids: median {statistics.median(fresh):.0f} items/s "
                  f"(min {min(fresh):.0f}, max {max(fresh):.0f}); replacing ids: {upsert:.0f} items/s")
            store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            disk = path.stat().st_size
            print(f"on disk: {disk / len(store):.0f} bytes/item ({disk / 2**20:.1f} MiB for {len(store)}); "
                  f"records {store.nbytes() / len(store):.0f} bytes/item")
            load_s = timed(lambda: Catalogue.load(store, VERSION))
            cat = Catalogue.load(store, VERSION)
            print(f"Catalogue.load({len(cat)}): {load_s:.2f} s = {len(cat) / load_s:.0f} items/s, "
                  f"{cat.nbytes / 2**20:.1f} MiB in memory")
            scan_s = timed(lambda: sum(1 for _ in store.iter_items(VERSION)))
            print(f"iter_items alone: {len(store) / scan_s:.0f} items/s")
            ids = store.ids()
            get_s = timed(lambda: [store.get(i) for i in ids[:2000]])
            print(f"get(): {get_s / 2000 * 1e6:.0f} us/item single-threaded")

        directory_of_files(Path(tmp) / "files", items)
        ids = [i.media_id for i in items]
        writes = [make_items(500, start=10**6 + k * 500) for k in range(6)]
        designs = (("connection per thread", SqliteFeatureStore), ("shared connection + lock", SharedConnectionStore))
        for name, cls in designs:
            p = Path(tmp) / f"{cls.__name__}.sqlite3"
            with cls(p) as store:
                store.put_many(items)
                r = reads_under_writes(store, ids, writes)
            print(f"{name}: reader get() during 6 x put_many(500): {r['reads']} reads, p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms; writer {r['write_items_per_s']:.0f} items/s")


if __name__ == "__main__":
    main()
