"""Offline training: the loss falls, a planted visual taste is learned, cold items stay untouched,
and `mmrec train` / `mmrec score` work end to end on the tiny visual-taste benchmark."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec.artifact import load_artifact
from mmrec.catalogue import Catalogue
from mmrec.cli import main
from mmrec.datasets.visual_taste import TINY, generate
from mmrec.feedback import EventKind
from mmrec.interaction_log import EVENT_KINDS, InteractionLog
from mmrec.model import ModelConfig, ParamLayout
from mmrec.training import PatentModel, TrainConfig, fit
from tests.synthetic_items import VERSION, make_item

CFG = ModelConfig()


def planted(items: int = 60, users: int = 12, seed: int = 0) -> tuple[Catalogue, InteractionLog, np.ndarray]:
    """Odd items carry a bright blob in channel 3; even users click only those, odd users only the
    others; the last 10 items never appear in the log (cold)."""
    catalogue = Catalogue(VERSION)
    catalogue.add([make_item(f"i{k:03d}", seed=k) for k in range(items)])
    for j, maps in enumerate(catalogue._maps):
        h, w = maps.shape[-2:]
        maps[1:items:2, 3, : h // 2, : w // 2] += 3.0
    rng = np.random.default_rng(seed)
    warm = np.arange(items - 10)
    rows = []
    for t in range(1500):
        user = int(rng.integers(users))
        item = int(rng.choice(warm))
        likes = (item % 2 == 1) == (user % 2 == 0)
        rows.append((user, item, EventKind.CLICK if likes else EventKind.SKIP, float(t)))
    log = InteractionLog(
        user=np.array([r[0] for r in rows], dtype=np.int64),
        item=np.array([r[1] for r in rows], dtype=np.int64),
        kind=np.array([EVENT_KINDS.index(r[2]) for r in rows], dtype=np.int8),
        label=np.array([float(r[2] is EventKind.CLICK) for r in rows], dtype=np.float32),
        weight=np.ones(len(rows), dtype=np.float32),
        time=np.array([r[3] for r in rows]),
        user_ids=tuple(f"u{u:02d}" for u in range(users)),
        item_ids=tuple(catalogue.ids),
    )
    return catalogue, log, np.arange(items - 10, items)


def test_fit_lowers_the_loss_and_learns_a_planted_taste_that_reaches_cold_items():
    torch.manual_seed(0)
    catalogue, log, cold = planted()
    model = PatentModel(CFG, log.num_users, log.num_items)
    history = fit(model, log, catalogue, TrainConfig(epochs=6, batch_size=128, learning_rate=0.02), progress=False)
    assert history[-1] < 0.8 * history[0]
    assert torch.all(model.item_bias.detach()[cold] == 0)  # never taught as negatives either
    scores = model.scores(torch.arange(log.num_users), torch.as_tensor(cold), catalogue)
    blob = torch.as_tensor(cold % 2 == 1)
    pattern_lovers, others = scores[0::2], scores[1::2]
    assert (pattern_lovers[:, blob].mean() - pattern_lovers[:, ~blob].mean()) > 0.5
    assert (others[:, ~blob].mean() - others[:, blob].mean()) > 0.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "visual-taste"
    generate(folder, TINY)
    return folder


def test_train_then_score_end_to_end(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMREC_INPUT_SIZE", "64")
    model = tmp_path / "model.safetensors"
    assert main(["train", str(tiny), "--out", str(model), "--epochs", "2"]) == 0
    artifact = load_artifact(model)
    assert len(artifact.user_ids) == 40 and artifact.user_offsets.abs().sum() > 0
    (tmp_path / "users.txt").write_text(f"{artifact.user_ids[0]}\nsomeone-new\n")
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model), "--media", str(tiny / "media"), "--users", str(tmp_path / "users.txt"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    items = len(list((tiny / "media").iterdir()))
    assert len(rows) == 2 * items and {r["user_id"] for r in rows} == {artifact.user_ids[0], "someone-new"}
    top = tmp_path / "top.csv"
    assert main(["score", "--model", str(model), "--media", str(tiny / "media"), "--top-k", "3", "--out", str(top)]) == 0
    first = [float(r["score"]) for r in csv.DictReader(top.open()) if r["user_id"] == artifact.user_ids[0]]
    assert len(first) == 3 and first == sorted(first, reverse=True)
    assert main(["score", "--model", str(tmp_path / "missing.safetensors"), "--media", str(tiny / "media"), "--out", str(top)]) == 2
    assert main(["train", str(tiny), "--out", str(model), "--memory-epochs", "1"]) == 2  # the faithful model has no item memory
    assert main(["train", str(tiny), "--out", str(model), "--modality-dropout", "0.7"]) == 2


def test_train_then_score_the_hybrid_extension(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The hybrid's settings reach the artifact with trained item and user factors, and `mmrec score`
    serves it."""
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMREC_INPUT_SIZE", "64")
    monkeypatch.setenv("MMREC_COLLAB_DIM", "4")
    monkeypatch.setenv("MMREC_OBJECTIVE", "pairwise")
    model = tmp_path / "model.safetensors"
    assert main(["train", str(tiny), "--out", str(model), "--epochs", "2", "--negatives", "8", "--memory-epochs", "1", "--modality-dropout", "0.25"]) == 0
    artifact = load_artifact(model)
    assert artifact.cfg.collab_dim == 4 and artifact.cfg.objective == "pairwise" and artifact.notes["memory_epochs"] == "1"
    assert artifact.notes["modality_dropout"] == "0.25"
    assert artifact.item_factors.shape == (len(artifact.item_ids), 4) and artifact.item_factors.abs().sum() > 0
    assert artifact.user_offsets[:, ParamLayout(artifact.cfg).slices["collab"]].abs().sum() > 0
    (tmp_path / "users.txt").write_text(f"{artifact.user_ids[0]}\n")
    out = tmp_path / "scores.csv"
    assert main(["score", "--model", str(model), "--media", str(tiny / "media"), "--users", str(tmp_path / "users.txt"), "--out", str(out)]) == 0
    assert len(list(csv.DictReader(out.open()))) == len(list((tiny / "media").iterdir()))
