"""Reading interaction logs (CSV, Parquet) with clear errors, and finding their media."""
from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmrec.feedback import EventKind
from mmrec.interaction_log import InteractionLogError, MediaIndex, read_interactions

CSV = """user_id,media_id,event,timestamp,weight,watch_fraction
alice,m2,click,1700000100,,
bob,m1,play,2023-11-14T22:13:20+00:00,2,0.75
alice,m1,impression,1700000000,,
bob,m2,like,2023-11-14T23:13:20+01:00,,
"""


def write(tmp_path: Path, text: str, name: str = "log.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_is_sorted_by_time_with_vocabularies_labels_and_weights(tmp_path: Path) -> None:
    log, uris = read_interactions(write(tmp_path, CSV))
    # 2023-11-14T22:13:20Z = 1700000000; 23:13:20+01:00 is the same instant (a tie keeps file order).
    assert log.time.tolist() == [1700000000, 1700000000, 1700000000, 1700000100]
    assert log.user_ids == ("alice", "bob") and log.item_ids == ("m1", "m2")
    assert [log.user_ids[u] for u in log.user] == ["bob", "alice", "bob", "alice"]
    assert [e.kind for e in log.events()] == [EventKind.PLAY, EventKind.IMPRESSION, EventKind.LIKE, EventKind.CLICK]
    assert log.label.tolist() == [0.75, 0.0, 1.0, 1.0]  # play: the watch fraction
    assert log.weight.tolist() == pytest.approx([2.0, 0.3, 2.0, 1.0])  # play 1 x weight 2; impression 0.3; like 2
    assert log.positive.tolist() == [True, False, True, True]
    assert log.first_seen().tolist() == [1700000000, 1700000000]
    assert uris == {}


def test_parquet_gives_the_same_log(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({
        "user_id": ["alice", "bob", "alice", "bob"],
        "media_id": ["m2", "m1", "m1", "m2"],
        "event": ["click", "play", "impression", "like"],
        "timestamp": pa.array([1700000100, 1700000000, 1700000000, 1700000000], pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "weight": [None, 2.0, None, None],
        "watch_fraction": [None, 0.75, None, None],
    })
    pq.write_table(table, tmp_path / "log.parquet")
    from_parquet, _ = read_interactions(tmp_path / "log.parquet")
    from_csv, _ = read_interactions(write(tmp_path, CSV))
    for name in ("user", "item", "kind", "label", "weight", "time"):
        assert np.array_equal(getattr(from_parquet, name), getattr(from_csv, name)), name
    naive = table.set_column(3, "timestamp", table.column("timestamp").cast(pa.timestamp("s")))
    pq.write_table(naive, tmp_path / "naive.parquet")
    with pytest.raises(InteractionLogError, match="without a time zone"):
        read_interactions(tmp_path / "naive.parquet")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u,m,clik,1,,", "line 3: unknown event 'clik'"),
        ("u,m,click,yesterday,,", "line 3: timestamp 'yesterday' is neither"),
        ("u,m,click,2024-01-01T00:00:00,,", "line 3: timestamp .* has no UTC offset"),
        ("u,,click,1,,", "line 3: media_id is empty"),
        ("u,m,play,1,,", "line 3: a play event needs watch_fraction"),
        ("u,m,play,1,,1.5", "line 3: a play event needs watch_fraction in \\[0, 1\\]"),
        ("u,m,click,1,,0.5", "line 3: watch_fraction is only for play events"),
        ("u,m,click,1,-1,", "line 3: weight must be > 0"),
        ("u,m,click,1,x,", "line 3: weight 'x' is not a number"),
        ("u,m,click", "line 3: 3 fields, the header has 6"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, row: str, message: str) -> None:
    header = "user_id,media_id,event,timestamp,weight,watch_fraction\nu,m,click,0,,\n"
    with pytest.raises(InteractionLogError, match=message):
        read_interactions(write(tmp_path, header + row + "\n"))


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(InteractionLogError, match=r"missing column\(s\) \['timestamp'\]"):
        read_interactions(write(tmp_path, "user_id,media_id,event\nu,m,click\n"))
    with pytest.raises(InteractionLogError, match="no events"):
        read_interactions(write(tmp_path, "user_id,media_id,event,timestamp\n"))
    with pytest.raises(InteractionLogError, match="use .csv or .parquet"):
        read_interactions(write(tmp_path, "", "log.json"))
    with pytest.raises(InteractionLogError, match="cannot read"):
        read_interactions(tmp_path / "absent.csv")


def test_media_from_a_folder(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "m1.png").write_bytes(b"one")
    (tmp_path / "media" / "m2.MP4").write_bytes(b"two")
    (tmp_path / "media" / "notes.txt").write_bytes(b"ignored")
    index = MediaIndex.from_folder(tmp_path / "media", ["m1", "m2"])
    assert index.read("m1") == b"one" and index.read("m2") == b"two"
    with pytest.raises(FileNotFoundError, match=r"1 of 2 media have no file .* \['m3'\]"):
        MediaIndex.from_folder(tmp_path / "media", ["m1", "m3"])
    (tmp_path / "media" / "m1.jpg").write_bytes(b"other")
    with pytest.raises(ValueError, match=r"several files .* 'm1': \['m1.jpg', 'm1.png'\]"):
        MediaIndex.from_folder(tmp_path / "media", ["m1"])


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "m3.png").write_bytes(b"three")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_media_from_a_uri_column(tmp_path: Path, http_folder: str) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"two")
    text = (
        "user_id,media_id,event,timestamp,uri\n"
        "u,m1,click,1,media/a.png\n"
        f"u,m2,click,2,{(tmp_path / 'b.png').as_uri()}\n"
        f"u,m3,click,3,{http_folder}/m3.png\n"
        "v,m1,skip,4,media/a.png\n"
    )
    log, uris = read_interactions(write(tmp_path, text))
    index = MediaIndex.from_uris(uris, tmp_path, log.item_ids)
    assert [index.read(m) for m in log.item_ids] == [b"one", b"two", b"three"]
    with pytest.raises(InteractionLogError, match="line 3: media 'm1' has uri 'b.png' here but 'media/a.png' at line 2"):
        read_interactions(write(tmp_path, "user_id,media_id,event,timestamp,uri\nu,m1,click,1,media/a.png\nv,m1,click,2,b.png\n"))
    with pytest.raises(ValueError, match="scheme 's3' not supported"):
        MediaIndex.from_uris({"m": "s3://bucket/m.png"}, tmp_path, ["m"])
