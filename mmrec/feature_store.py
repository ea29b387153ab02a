"""Item feature storage: the FeatureStore interface, an in-memory fake and the SQLite default.

Both implementations keep each item as one item_codec record (fp16 maps plus metadata), so a
record read back is bit-identical to what was put, whichever store holds it. Re-putting a media id
replaces its record in place (upsert; it keeps its position in ids() and iter_items()).

Items are comparable only under one FeatureVersion; a store may hold several while features are
re-extracted under a new backbone or projection. Reads that a scorer builds on (ids, iter_items,
nbytes) take an optional version filter, and versions() says what the store holds.
"""
from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.item_codec import decode_item, encode_item
from mmrec.settings import Settings

STORE_FILE = "features.sqlite3"


@runtime_checkable
class FeatureStore(Protocol):
    """A map media_id -> ItemFeatures, safe to share between threads (durable in SqliteFeatureStore)."""

    def put(self, item: ItemFeatures) -> None:
        """Insert or replace one item."""

    def put_many(self, items: Iterable[ItemFeatures], checkpoints: Mapping[str, int] | None = None) -> None:
        """Insert or replace items atomically: all are stored or (on an error) none.

        checkpoints: source positions (e.g. "topic/partition" -> next offset) committed with them.
        """

    def checkpoints(self) -> dict[str, int]:
        """The source positions stored by put_many."""

    def get(self, media_id: str) -> ItemFeatures | None:
        """The item, or None when absent."""

    def get_many(self, media_ids: Iterable[str]) -> dict[str, ItemFeatures]:
        """The items found among media_ids (absent ids are left out)."""

    def __contains__(self, media_id: object) -> bool: ...

    def __len__(self) -> int:
        """Items of every version."""

    def ids(self, version: FeatureVersion | None = None) -> list[str]:
        """Media ids in insertion order, optionally of one version only."""

    def iter_items(self, version: FeatureVersion | None = None) -> Iterator[ItemFeatures]:
        """Stream items in insertion order without holding them all in memory."""

    def versions(self) -> dict[FeatureVersion, int]:
        """Item count per feature version held."""

    def nbytes(self, version: FeatureVersion | None = None) -> int:
        """Total encoded record bytes (maps plus metadata), optionally of one version."""

    def delete(self, media_id: str) -> bool:
        """Remove an item; True when it was present."""

    def close(self) -> None:
        """Release resources; later calls raise ValueError. Idempotent."""

    def __enter__(self) -> FeatureStore: ...

    def __exit__(self, *exc: object) -> None: ...


class MemoryFeatureStore:
    """FeatureStore in a dict of encoded records (tests and fakes; lost on exit)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[FeatureVersion, bytes]] = {}
        self._checkpoints: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def put(self, item: ItemFeatures) -> None:
        self.put_many([item])

    def put_many(self, items: Iterable[ItemFeatures], checkpoints: Mapping[str, int] | None = None) -> None:
        encoded = [(item.media_id, item.version, encode_item(item)) for item in items]
        with self._open():
            for media_id, version, record in encoded:
                self._records[media_id] = (version, record)
            self._checkpoints.update(checkpoints or {})

    def checkpoints(self) -> dict[str, int]:
        with self._open():
            return dict(self._checkpoints)

    def get(self, media_id: str) -> ItemFeatures | None:
        with self._open():
            entry = self._records.get(media_id)
        return None if entry is None else decode_item(entry[1])

    def get_many(self, media_ids: Iterable[str]) -> dict[str, ItemFeatures]:
        with self._open():
            found = {i: self._records[i][1] for i in media_ids if i in self._records}
        return {i: decode_item(record) for i, record in found.items()}

    def __contains__(self, media_id: object) -> bool:
        with self._open():
            return media_id in self._records

    def __len__(self) -> int:
        with self._open():
            return len(self._records)

    def ids(self, version: FeatureVersion | None = None) -> list[str]:
        with self._open():
            return [i for i, (v, _) in self._records.items() if version in (None, v)]

    def iter_items(self, version: FeatureVersion | None = None) -> Iterator[ItemFeatures]:
        with self._open():
            records = [r for v, r in self._records.values() if version in (None, v)]
        return (decode_item(r) for r in records)

    def versions(self) -> dict[FeatureVersion, int]:
        counts: dict[FeatureVersion, int] = {}
        with self._open():
            for version, _ in self._records.values():
                counts[version] = counts.get(version, 0) + 1
        return counts

    def nbytes(self, version: FeatureVersion | None = None) -> int:
        with self._open():
            return sum(len(r) for v, r in self._records.values() if version in (None, v))

    def delete(self, media_id: str) -> bool:
        with self._open():
            return self._records.pop(media_id, None) is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._records.clear()

    def __enter__(self) -> MemoryFeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise ValueError("feature store is closed")
            yield


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS items (
        media_id   TEXT PRIMARY KEY NOT NULL,
        backbone   TEXT NOT NULL,
        projection TEXT NOT NULL,
        created_at REAL NOT NULL,
        nbytes     INTEGER NOT NULL,
        record     BLOB NOT NULL  -- item_codec record; last, so metadata reads skip its overflow pages
    )""",
    "CREATE INDEX IF NOT EXISTS items_version ON items (backbone, projection)",
    "CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY NOT NULL, position INTEGER NOT NULL)",
)
_SCHEMA_VERSION = 1
# Measured (benchmarks/bench_storage.py): same bytes on disk as 4 KiB pages, faster batch writes and
# scans, same point reads. Takes effect only when the file is created.
_PAGE_SIZE = 16384
_UPSERT = """
INSERT INTO items (media_id, backbone, projection, created_at, nbytes, record)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (media_id) DO UPDATE SET
    backbone = excluded.backbone, projection = excluded.projection,
    created_at = excluded.created_at, nbytes = excluded.nbytes, record = excluded.record
"""
_CHECKPOINT = "INSERT INTO checkpoints (source, position) VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET position = excluded.position"
_PAGE = 256  # rows per query while streaming
_IN_CHUNK = 500  # ids per IN (...) lookup, below SQLite's bound-parameter limit


class _Connection(sqlite3.Connection):
    """A connection that a WeakSet can track (sqlite3.Connection itself takes no weak references)."""


class SqliteFeatureStore:
    """FeatureStore in one SQLite file in WAL mode, one row per item.

    Each thread gets its own connection, so readers (the event loop) never wait on a writer (an
    executor thread) and vice versa: WAL gives readers the last committed snapshot. Writes are
    single transactions (BEGIN IMMEDIATE); a concurrent writer waits up to busy_timeout_s.
    synchronous=FULL: a put that returned survives a process kill and a power loss (on a disk that
    honours fsync), so a consumer may commit its Kafka offset right after it. That is one fsync per
    transaction: negligible for batches, ~2k single puts/s instead of ~5k under NORMAL (measured).
    A thread's connection closes when the thread ends, the rest on close().
    """

    def __init__(self, path: Path | str, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()  # owned by threads' locals
        self._lock = threading.Lock()  # guards _connections and _closed, never held during I/O
        self._closed = False
        conn = self._conn()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
        if version not in (0, _SCHEMA_VERSION):
            self.close()
            raise ValueError(f"{self.path}: schema version {version}, this code reads {_SCHEMA_VERSION}")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            self.close()
            raise ValueError(f"{self.path}: cannot enable WAL journal mode")
        if version == 0:  # IF NOT EXISTS: two processes creating the file at once both succeed
            with self._transaction(conn):
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def put(self, item: ItemFeatures) -> None:
        self.put_many([item])

    def put_many(self, items: Iterable[ItemFeatures], checkpoints: Mapping[str, int] | None = None) -> None:
        rows = []
        for item in items:
            record = encode_item(item)
            v = item.version
            rows.append((item.media_id, v.backbone, v.projection, float(item.created_at), len(record), record))
        conn = self._conn()
        with self._transaction(conn):
            conn.executemany(_UPSERT, rows)
            conn.executemany(_CHECKPOINT, list((checkpoints or {}).items()))

    def checkpoints(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT source, position FROM checkpoints"))

    def get(self, media_id: str) -> ItemFeatures | None:
        row = self._conn().execute("SELECT record FROM items WHERE media_id = ?", (media_id,)).fetchone()
        return None if row is None else decode_item(row[0])

    def get_many(self, media_ids: Iterable[str]) -> dict[str, ItemFeatures]:
        wanted = list(dict.fromkeys(media_ids))
        conn = self._conn()
        found: dict[str, ItemFeatures] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            for media_id, record in conn.execute(
                f"SELECT media_id, record FROM items WHERE media_id IN ({marks})", chunk
            ):
                found[media_id] = decode_item(record)
        return found

    def __contains__(self, media_id: object) -> bool:
        if not isinstance(media_id, str):
            return False
        return self._conn().execute("SELECT 1 FROM items WHERE media_id = ?", (media_id,)).fetchone() is not None

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM items").fetchone()[0]

    def ids(self, version: FeatureVersion | None = None) -> list[str]:
        where, args = _version_filter(version)
        rows = self._conn().execute(f"SELECT media_id FROM items {where} ORDER BY rowid", args)
        return [media_id for (media_id,) in rows]

    def iter_items(self, version: FeatureVersion | None = None) -> Iterator[ItemFeatures]:
        # Keyset pages: each query is short, so no read snapshot stays open between pages.
        where, args = _version_filter(version)
        where = f"{where} AND rowid > ?" if where else "WHERE rowid > ?"
        sql = f"SELECT rowid, record FROM items {where} ORDER BY rowid LIMIT {_PAGE}"
        last = -(1 << 63)
        while True:
            page = self._conn().execute(sql, (*args, last)).fetchall()
            for _, record in page:
                yield decode_item(record)
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def versions(self) -> dict[FeatureVersion, int]:
        rows = self._conn().execute("SELECT backbone, projection, COUNT(*) FROM items GROUP BY backbone, projection")
        return {FeatureVersion(backbone=b, projection=p): n for b, p, n in rows}

    def nbytes(self, version: FeatureVersion | None = None) -> int:
        where, args = _version_filter(version)
        return self._conn().execute(f"SELECT COALESCE(SUM(nbytes), 0) FROM items {where}", args).fetchone()[0]

    def delete(self, media_id: str) -> bool:
        conn = self._conn()
        with self._transaction(conn):
            return conn.execute("DELETE FROM items WHERE media_id = ?", (media_id,)).rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        for conn in connections:
            conn.close()

    def __enter__(self) -> SqliteFeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise ValueError(f"feature store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        # check_same_thread=False only so that close() may close it from another thread.
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
            factory=_Connection,
        )
        conn.execute("PRAGMA synchronous=FULL")
        with self._lock:
            if self._closed:
                conn.close()
                raise ValueError(f"feature store {self.path} is closed")
            self._connections.add(conn)
        self._local.conn = conn
        return conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _version_filter(version: FeatureVersion | None) -> tuple[str, tuple[str, ...]]:
    if version is None:
        return "", ()
    return "WHERE backbone = ? AND projection = ?", (version.backbone, version.projection)


def open_feature_store(settings: Settings) -> SqliteFeatureStore:
    """The default store: <data_dir>/features.sqlite3, created (with its directory) on first use."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteFeatureStore(settings.data_dir / STORE_FILE)
