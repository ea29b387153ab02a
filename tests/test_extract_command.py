"""`mmrec extract`: stores each file's features and prints their shapes and stored bytes."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mmrec.cli import main
from mmrec.feature_store import SqliteFeatureStore
from mmrec.item_codec import encode_item
from mmrec.samples import sample_image, sample_video


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MMREC_DEVICE", "cpu")
    return tmp_path / "var"


def test_prints_shapes_and_stored_bytes_for_an_image_and_a_video(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extract", str(sample_image("chelsea.png")), str(sample_video("bikes.mp4"))]) == 0  # defaults: 224 px
    out = capsys.readouterr().out
    with SqliteFeatureStore(data_dir / "features.sqlite3") as store:
        for media_id, kind, frames in (("chelsea.png", "image", "1 frame"), ("bikes.mp4", "video", "12 frames")):
            block = out.split(f"{media_id}: ")[1]
            assert block.startswith(kind) and frames in block.splitlines()[0]
            shapes = re.findall(r"layer \d \(block +(\d+)\): \((\d+), (\d+), (\d+)\) float16", block)[:3]
            assert shapes == [("6", "8", "14", "14"), ("13", "8", "14", "14"), ("17", "8", "7", "7")]
            item = store.get(media_id)
            assert item is not None and item.media_type == kind
            stored = int(re.search(r"stored: (\d+) bytes \((\d+) bytes of maps\)", block).group(1))
            assert stored == len(encode_item(item)) and item.nbytes == 7056
            assert all(m.dtype == torch.float16 for m in item.maps)


def test_shapes_follow_the_environment_and_bad_files_fail_with_their_reason(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MMREC_INPUT_SIZE", "64")
    monkeypatch.setenv("MMREC_CHANNELS", "4")
    cut = tmp_path / "cut.png"
    cut.write_bytes(sample_image("coins.png").read_bytes()[:3000])
    assert main(["extract", str(cut), str(sample_image("rocket.jpg")), str(tmp_path / "missing.webp")]) == 1
    captured = capsys.readouterr()
    assert "cut.png: error truncated:" in captured.err and "missing.webp: error unreadable" in captured.err
    assert "layer 3 (block 17): (4, 2, 2) float16" in captured.out
    assert "stored:" in captured.out and "cut.png:" not in captured.out
    with SqliteFeatureStore(data_dir / "features.sqlite3") as store:
        assert store.ids() == ["rocket.jpg"]
