"""The visual-taste generator: seeded determinism, cold items only in the test period, ground truth
consistent with the interactions, and the command."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from mmrec.cli import main
from mmrec.datasets.fashion_mnist import load_fashion_mnist
from mmrec.datasets.visual_taste import DAY, EPOCH, TINY, Simulation, generate, true_attributes
from mmrec.evaluation.split import TemporalSplit
from mmrec.interaction_log import read_interactions

pytestmark = pytest.mark.usefixtures("fashion_mnist")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(out, TINY)
    return out


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fashion_mnist_loads_all_70000_images() -> None:
    images, labels = load_fashion_mnist()
    assert images.shape == (70_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [7000] * 10


def test_same_seed_same_bytes_other_seed_other_world(tiny: Path, tmp_path: Path) -> None:
    assert main(["dataset", "make", "visual-taste", "--size", "tiny", "--out", str(tmp_path / "again")]) == 0
    assert digests(tmp_path / "again") == digests(tiny)
    assert len(list((tiny / "media").glob("*.png"))) == TINY.items
    other = Simulation.draw(TINY.__class__(**{**TINY.__dict__, "seed": 1}))
    assert not np.array_equal(other.affinity, Simulation.load(tiny).affinity)
    assert main(["dataset", "make", "visual-taste", "--size", "tiny", "--out", str(tmp_path / "again")]) == 2  # not empty


def test_cold_items_appear_only_in_the_test_period_and_the_split_falls_on_day_boundaries(tiny: Path) -> None:
    log, _ = read_interactions(tiny / "interactions.csv")
    split = TemporalSplit.at_quantiles(log, 0.7, 0.8)
    # Equal events per day: the quantile cuts are the first events of days 14 and 16 (of 20).
    assert EPOCH + 14 * DAY <= split.validation_start < EPOCH + 15 * DAY
    assert EPOCH + 16 * DAY <= split.test_start < EPOCH + 17 * DAY
    assert int((log.time < EPOCH + 14 * DAY).sum()) == round(0.7 * len(log))
    with (tiny / "items.csv").open() as f:
        items = {r["media_id"]: r for r in csv.DictReader(f)}
    first = dict(zip(log.item_ids, log.first_seen()))
    cold = {m for m, r in items.items() if r["cold"] == "1"}
    assert cold and all(first[m] >= split.test_start for m in cold if m in first)
    assert all(first[m] >= EPOCH + int(items[m]["release_day"]) * DAY for m in first)  # nothing shown before release
    warm_in_test = {m for m in first if first[m] < split.test_start}
    assert not warm_in_test & cold


def test_ground_truth_is_consistent_with_the_interactions(tiny: Path) -> None:
    sim = Simulation.load(tiny)
    log, _ = read_interactions(tiny / "interactions.csv")
    users = np.array([sim.user_ids.index(u) for u in log.user_ids])[log.user]
    items = np.array([sim.item_ids.index(i) for i in log.item_ids])[log.item]
    z = sim.logits()[users, items]
    p = 1 / (1 + np.exp(-z))
    engaged = log.positive
    # The engagement rate matches the model's mean probability, and z separates engaged from not.
    assert engaged.mean() == pytest.approx(p.mean(), abs=0.03)
    greater = (z[engaged][:, None] > z[~engaged][None, :]).mean()
    assert greater > 0.7
    # z from its definition for one pair: base + max over garments of affinity x colour preference
    # (0 without a liked class) + background + pop + noise + bias.
    u, i = 3, 5
    present = np.flatnonzero(sim.classes[i])
    taste = max(0.0, max(sim.affinity[u, c] * sim.colour_preference[u, sim.colour[i, c]] for c in present))
    expected = (sim.config.base_logit + taste + sim.background_preference[u, sim.background[i]]
                + sim.popularity[i] + float(sim.noise[u, i]) + sim.user_bias[u])
    assert sim.logits()[u, i] == pytest.approx(expected, abs=1e-5)
    # Exposure shares: the untargeted part of a day sums to 1 - mix_targeted; the feed adds mix_targeted.
    assert sim.item_shares.sum(axis=0) == pytest.approx(np.full(TINY.days, 1 - TINY.mix_targeted))
    day = sim.expected_exposures(np.arange(TINY.users), np.arange(TINY.items), EPOCH + 3 * DAY, EPOCH + 4 * DAY)
    assert day.sum(axis=1) == pytest.approx(np.ones(TINY.users))
    ids, names, attributes = true_attributes(tiny)
    # 40 "<colour> <class>" flags, then the background one-hot.
    assert ids == sim.item_ids and len(names) == 44 and names[0] == "red tshirt" and names[40] == "background brick"
    patterns = attributes[:, :40].reshape(-1, 10, 4)
    assert np.array_equal(patterns.any(axis=2), sim.classes)
    assert np.array_equal(np.where(sim.classes, patterns.argmax(axis=2), -1), sim.colour)
    assert np.array_equal(attributes[:, 40:].argmax(axis=1), sim.background)
