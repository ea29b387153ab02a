"""Interaction logs: read and validate a CSV or Parquet file of user events; keep it compact in memory.

File columns (a header row names them; order and extra columns do not matter):

    user_id         text (or integer): who acted
    media_id        text (or integer): on which media item
    event           impression | click | like | share | skip | dislike | play (mmrec.feedback.EventKind)
    timestamp       unix seconds (integer or decimal), or ISO-8601 with a UTC offset
                    ("2024-03-01T12:00:00+00:00", "2024-03-01T12:00:00Z"); Parquet timestamp columns
                    must carry a time zone
    weight          optional, > 0: multiplies the event kind's loss weight (empty = 1)
    watch_fraction  needed by play events, in [0, 1]: the play's label (other events leave it empty)
    uri             optional: where the media lives, a path (relative to the log's folder), file://,
                    http:// or https://; every row of one media id must name the same uri

Labels and weights come from mmrec.feedback.FeedbackWeights: click, like, share -> 1; skip, dislike,
impression -> 0; play -> watch fraction. A bad value raises InteractionLogError naming the file and
the row (CSV: the line number, header = line 1; Parquet: the 1-based data row).

Media are found in a folder as <media_id>.<ext> (MediaIndex.from_folder) or through the uri column
(MediaIndex.from_uris).
"""
from __future__ import annotations

import csv
import hashlib
import math
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from mmrec.feedback import EventKind, FeedbackWeights

EVENT_KINDS: tuple[EventKind, ...] = tuple(EventKind)
REQUIRED_COLUMNS = ("user_id", "media_id", "event", "timestamp")
MEDIA_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".mp4", ".m4v", ".mov", ".webm", ".mkv")
_KIND_OF = {kind.value: code for code, kind in enumerate(EVENT_KINDS)}
_FETCH_TIMEOUT_S = 30.0


class InteractionLogError(ValueError):
    """A log file that cannot be read; the message names the file and, where one is to blame, the row."""


@dataclass(frozen=True)
class Event:
    """One interaction, by vocabulary index (see InteractionLog)."""

    user: int
    item: int
    kind: EventKind
    label: float  # in [0, 1]; positive when >= 0.5
    weight: float  # > 0
    time: float  # unix seconds


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """Events sorted by time (ties keep file order), as parallel arrays over E events.

    user   (E,) int64    index into user_ids
    item   (E,) int64    index into item_ids
    kind   (E,) int8     index into EVENT_KINDS
    label  (E,) float32  in [0, 1]
    weight (E,) float32  > 0
    time   (E,) float64  unix seconds, non-decreasing
    user_ids, item_ids   the vocabularies (sorted); a selection of a log keeps its parent's
    """

    user: np.ndarray
    item: np.ndarray
    kind: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    time: np.ndarray
    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.user.shape[0])

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def positive(self) -> np.ndarray:
        """(E,) bool: engagement at least as likely as not (label >= 0.5)."""
        return self.label >= 0.5

    def select(self, mask: np.ndarray) -> InteractionLog:
        """The events where mask (E,) bool is true, with the same vocabularies."""
        return InteractionLog(
            self.user[mask], self.item[mask], self.kind[mask], self.label[mask], self.weight[mask],
            self.time[mask], self.user_ids, self.item_ids,
        )

    def first_seen(self) -> np.ndarray:
        """(I,) float64: time of each item's first event in this log, +inf for items without one."""
        first = np.full(self.num_items, np.inf)
        np.minimum.at(first, self.item, self.time)
        return first

    def event(self, k: int) -> Event:
        return Event(
            user=int(self.user[k]), item=int(self.item[k]), kind=EVENT_KINDS[int(self.kind[k])],
            label=float(self.label[k]), weight=float(self.weight[k]), time=float(self.time[k]),
        )

    def events(self) -> Iterator[Event]:
        return (self.event(k) for k in range(len(self)))


def build_log(
    users: Sequence[str],
    items: Sequence[str],
    kinds: Sequence[EventKind],
    times: Sequence[float],
    labels: Sequence[float],
    weights: Sequence[float],
) -> InteractionLog:
    """A log from validated per-event values (any order; sorted by time here, stably)."""
    order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
    user_ids, user = np.unique(np.asarray(users, dtype=object).astype(str), return_inverse=True)
    item_ids, item = np.unique(np.asarray(items, dtype=object).astype(str), return_inverse=True)
    return InteractionLog(
        user=user.astype(np.int64)[order],
        item=item.astype(np.int64)[order],
        kind=np.asarray([_KIND_OF[k.value] for k in kinds], dtype=np.int8)[order],
        label=np.asarray(labels, dtype=np.float32)[order],
        weight=np.asarray(weights, dtype=np.float32)[order],
        time=np.asarray(times, dtype=np.float64)[order],
        user_ids=tuple(str(u) for u in user_ids),
        item_ids=tuple(str(i) for i in item_ids),
    )


def read_interactions(path: Path, feedback: FeedbackWeights = FeedbackWeights()) -> tuple[InteractionLog, dict[str, str]]:
    """Read and validate a .csv or .parquet log -> (log, media_id -> uri; empty without a uri column)."""
    columns, row_name = _read_columns(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InteractionLogError(f"{path}: missing column(s) {missing}; a log needs {list(REQUIRED_COLUMNS)}")
    n = len(columns["user_id"])
    if n == 0:
        raise InteractionLogError(f"{path}: no events")
    users, items, kinds, times, labels, weights = [], [], [], [], [], []
    uris: dict[str, str] = {}
    uri_row: dict[str, int] = {}
    for r in range(n):
        try:
            user = _identifier(columns["user_id"][r], "user_id")
            item = _identifier(columns["media_id"][r], "media_id")
            kind = _event_kind(columns["event"][r])
            fraction = _optional_number(columns["watch_fraction"][r], "watch_fraction") if "watch_fraction" in columns else None
            if kind is not EventKind.PLAY and fraction is not None:
                raise ValueError(f"watch_fraction is only for play events, this is {kind.value!r}")
            fb = feedback.feedback(kind, fraction)
            factor = _optional_number(columns["weight"][r], "weight") if "weight" in columns else None
            if factor is not None and not factor > 0:
                raise ValueError(f"weight must be > 0, got {factor!r}")
            times.append(_timestamp(columns["timestamp"][r]))
            if "uri" in columns:
                uri = _identifier(columns["uri"][r], "uri")
                if uris.setdefault(item, uri) != uri:
                    raise ValueError(f"media {item!r} has uri {uri!r} here but {uris[item]!r} at {row_name(uri_row[item])}")
                uri_row.setdefault(item, r)
        except ValueError as exc:
            raise InteractionLogError(f"{path}: {row_name(r)}: {exc}") from None
        users.append(user)
        items.append(item)
        kinds.append(kind)
        labels.append(fb.label)
        weights.append(fb.weight * (1.0 if factor is None else factor))
    return build_log(users, items, kinds, times, labels, weights), uris


def _read_columns(path: Path) -> tuple[dict[str, list[object]], Callable[[int], str]]:
    """Column name -> values, and a function naming data row r (0-based) for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    raise InteractionLogError(f"{path}: empty file (expected a header row)")
                header = [h.strip() for h in header]
                rows = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise InteractionLogError(f"{path}: cannot read: {exc}") from None
        for r, row in enumerate(rows):
            if len(row) != len(header):
                raise InteractionLogError(f"{path}: line {r + 2}: {len(row)} fields, the header has {len(header)}")
        columns = {name: [row[c] for row in rows] for c, name in enumerate(header)}
        return columns, lambda r: f"line {r + 2}"
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path), lambda r: f"row {r + 1}"
    raise InteractionLogError(f"{path}: unknown log format {suffix!r}; use .csv or .parquet")


def _read_parquet(path: Path) -> dict[str, list[object]]:
    import pyarrow as pa  # imported here: only Parquet logs need it
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InteractionLogError(f"{path}: cannot read Parquet: {exc}") from None
    columns: dict[str, list[object]] = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            if column.type.tz is None:
                raise InteractionLogError(f"{path}: column {name!r} is a timestamp without a time zone; store UTC (e.g. timestamp[s, tz=UTC])")
            seconds = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False) / 1e6
            columns[name] = seconds.tolist()
        else:
            columns[name] = column.to_pylist()
    return columns


def _identifier(value: object, name: str) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} is empty")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{name} is empty")
    return text


def _event_kind(value: object) -> EventKind:
    text = "" if value is None else str(value).strip().lower()
    if text not in _KIND_OF:
        raise ValueError(f"unknown event {value!r}; expected one of {[k.value for k in EVENT_KINDS]}")
    return EVENT_KINDS[_KIND_OF[text]]


def _optional_number(value: object, name: str) -> float | None:
    if value is None or isinstance(value, str) and not value.strip():
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} {value!r} is not finite")
    return number


def _timestamp(value: object) -> float:
    """Unix seconds from a number or an ISO-8601 text with a UTC offset."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"timestamp {value!r} is neither unix seconds nor ISO-8601") from None
            if parsed.tzinfo is None:
                raise ValueError(f"timestamp {value!r} has no UTC offset (write e.g. {text}+00:00)")
            number = parsed.timestamp()
    else:
        raise ValueError(f"timestamp {value!r} is neither unix seconds nor ISO-8601")
    if not math.isfinite(number):
        raise ValueError(f"timestamp {value!r} is not finite")
    return number


class MediaIndex:
    """Where each media item's bytes are: media_id -> path or URL."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    @classmethod
    def from_folder(cls, folder: Path, media_ids: Sequence[str]) -> MediaIndex:
        """<folder>/<media_id>.<ext> for every id (ext in MEDIA_EXTENSIONS, any case).

        Raises FileNotFoundError naming missing ids, ValueError for an id with several files.
        """
        if not folder.is_dir():
            raise FileNotFoundError(f"media folder {folder} does not exist")
        found: dict[str, list[Path]] = {}
        for path in folder.iterdir():
            if path.suffix.lower() in MEDIA_EXTENSIONS and path.is_file():
                found.setdefault(path.stem, []).append(path)
        missing = [m for m in media_ids if m not in found]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(media_ids)} media have no file <media_id>.<ext> in {folder}, "
                f"e.g. {missing[:5]} (extensions {', '.join(MEDIA_EXTENSIONS)})"
            )
        several = {m: sorted(p.name for p in found[m]) for m in media_ids if len(found[m]) > 1}
        if several:
            first = next(iter(several.items()))
            raise ValueError(f"{len(several)} media have several files in {folder}, e.g. {first[0]!r}: {first[1]}")
        return cls({m: str(found[m][0]) for m in media_ids})

    @classmethod
    def from_uris(cls, uris: dict[str, str], base: Path, media_ids: Sequence[str]) -> MediaIndex:
        """From a log's uri column; relative paths are taken relative to `base` (the log's folder)."""
        sources: dict[str, str] = {}
        for media_id in media_ids:
            uri = uris[media_id]
            scheme = urllib.parse.urlsplit(uri).scheme.lower()
            if scheme in ("http", "https"):
                sources[media_id] = uri
            elif scheme == "file":
                sources[media_id] = urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)
            elif scheme == "" or len(scheme) == 1:  # a path (a Windows drive letter parses as a scheme)
                sources[media_id] = str(base / uri)
            else:
                raise ValueError(f"media {media_id!r}: uri scheme {scheme!r} not supported (path, file, http, https)")
        return cls(sources)

    def read(self, media_id: str) -> bytes:
        """The media's bytes. Raises OSError (a missing file, an unreachable or failing URL)."""
        source = self.sources[media_id]
        if source.startswith(("http://", "https://")):
            with urllib.request.urlopen(source, timeout=_FETCH_TIMEOUT_S) as response:
                return response.read()
        return Path(source).read_bytes()


def content_hash(data: bytes) -> str:
    """Hex SHA-256 of media bytes: tells a cached feature whether its media changed."""
    return hashlib.sha256(data).hexdigest()
