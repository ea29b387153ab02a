"""The evaluation protocol: split, ranking task (relevance, exclusion, cold start), ranking in
chunks, the prequential replay, the feature cache, the registry and `mmrec evaluate` end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from mmrec.cli import main
from mmrec.datasets.visual_taste import TINY, generate
from mmrec.evaluation import registry
from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.features import MediaFailures, cached_features
from mmrec.evaluation.protocol import RankerSpec
from mmrec.evaluation.runner import prequential, rank_task
from mmrec.evaluation.split import RankingTask, TemporalSplit
from mmrec.feature_store import MemoryFeatureStore
from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.feedback import EventKind
from mmrec.interaction_log import EVENT_KINDS, Event, InteractionLog, MediaIndex
from mmrec.media import CorruptMedia
from mmrec.samples import sample_image
from mmrec.settings import Settings

needs_fashion_mnist = pytest.mark.usefixtures("fashion_mnist")


def log_of(rows: list[tuple[str, str, str, float]], users: tuple[str, ...], items: tuple[str, ...]) -> InteractionLog:
    """Events (user, item, kind, time); label 1 for click and like."""
    rows = sorted(rows, key=lambda r: r[3])
    return InteractionLog(
        user=np.array([users.index(r[0]) for r in rows], dtype=np.int64),
        item=np.array([items.index(r[1]) for r in rows], dtype=np.int64),
        kind=np.array([EVENT_KINDS.index(EventKind(r[2])) for r in rows], dtype=np.int8),
        label=np.array([float(r[2] in ("click", "like")) for r in rows], dtype=np.float32),
        weight=np.ones(len(rows), dtype=np.float32),
        time=np.array([r[3] for r in rows], dtype=np.float64),
        user_ids=users,
        item_ids=items,
    )


USERS, ITEMS = ("a", "b", "c"), ("w", "x", "y", "z", "q")
# Times 0..9: train = 0..6, validation = 7, test = 8, 9 (cuts at event 7 and 8 of 10).
EVENTS = [
    ("a", "x", "click", 0), ("a", "y", "impression", 1), ("b", "x", "click", 2), ("b", "w", "skip", 3),
    ("c", "w", "click", 4), ("a", "w", "click", 5), ("c", "x", "like", 6),
    ("b", "y", "click", 7),
    ("a", "x", "click", 8), ("a", "y", "click", 8.5), ("b", "z", "click", 9),
]


def test_split_at_event_quantiles() -> None:
    log = log_of(EVENTS, USERS, ITEMS)
    split = TemporalSplit.at_quantiles(log, 0.6, 0.7)
    # 11 events: round(0.6 * 11) = 7 before the validation cut (time 7), round(0.7 * 11) = 8 before the test cut (8).
    assert (split.validation_start, split.test_start) == (7.0, 8.0)
    train, validation, test = split.parts(log)
    assert (len(train), len(validation), len(test)) == (7, 1, 3)
    with pytest.raises(ValueError, match="empty part"):
        TemporalSplit.at_quantiles(log, 0.95, 0.99)


def test_task_relevance_exclusion_candidates_and_cold_items() -> None:
    log = log_of(EVENTS, USERS, ITEMS)
    split = TemporalSplit.at_quantiles(log, 0.6, 0.7)
    history = log.select(log.time < split.test_start)
    task = RankingTask.build(history, split.parts(log)[2], log.first_seen(), split.test_start, np.inf)
    # Candidates: items first seen before the end (w, x, y, z; q never appears). Cold: z (first seen at 9).
    assert [ITEMS[i] for i in task.items] == ["w", "x", "y", "z"] and task.cold.tolist() == [False, False, False, True]
    # a re-clicked x (engaged in history: excluded, not relevant) and clicked y (only an impression
    # before: relevant); b clicked z. c did nothing in the test period and is not evaluated.
    assert [USERS[u] for u in task.users] == ["a", "b"]
    relevant = task.dense(task.relevant, slice(0, 2))
    excluded = task.dense(task.excluded, slice(0, 2))
    assert relevant.tolist() == [[False, False, True, False], [False, False, False, True]]
    assert excluded.tolist() == [[True, True, False, False], [False, True, True, False]]  # a: w, x; b: x, y


class FixedScores:
    """A ranker whose score for (u, i) is table[u, i]; it records what it learns."""

    def __init__(self, table: Tensor) -> None:
        self.table = table
        self.learned: list[Event] = []

    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None: ...

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        return self.table[users][:, items]

    def learn(self, event: Event) -> None:
        self.learned.append(event)


def test_rank_task_overall_and_cold() -> None:
    log = log_of(EVENTS, USERS, ITEMS)
    split = TemporalSplit.at_quantiles(log, 0.6, 0.7)
    history = log.select(log.time < split.test_start)
    task = RankingTask.build(history, split.parts(log)[2], log.first_seen(), split.test_start, np.inf)
    # a: candidates y, z (w, x excluded); y scores 1 < z 2 -> y ranks 2nd: NDCG@10 = 1/log2(3).
    # b: candidates w, z (x, y excluded); z scores 3 > w 0 -> rank 1. Cold (z alone) only for b: rank 1.
    table = torch.tensor([[9.0, 9.0, 1.0, 2.0, 0.0], [0.0, 9.0, 9.0, 3.0, 0.0], [0.0] * 5])
    result = rank_task(FixedScores(table), task, torch.arange(5), k_max=20)
    assert result.overall.ndcg(10).tolist() == pytest.approx([1 / np.log2(3), 1.0])
    assert result.overall.auc.tolist() == [0.0, 1.0]
    assert len(result.cold) == 1 and result.cold.ndcg(10).tolist() == [1.0]


def test_prequential_scores_then_learns_every_event_in_order() -> None:
    log = log_of(EVENTS, USERS, ITEMS)
    split = TemporalSplit.at_quantiles(log, 0.6, 0.7)
    history = log.select(log.time < split.test_start)
    test = split.parts(log)[2]
    ranker = FixedScores(torch.tensor([[9.0, 9.0, 1.0, 2.0, 0.0], [0.0, 9.0, 9.0, 3.0, 0.0], [0.0] * 5]))
    result = prequential(ranker, history, test, split.test_start, log.first_seen(), torch.arange(5), k_max=20)
    assert [(USERS[e.user], ITEMS[e.item]) for e in ranker.learned] == [("a", "x"), ("a", "y"), ("b", "z")]
    # Scored: a->y at 8.5 (x re-engaged: skipped), among w, x, y (z not yet seen) minus a's w, x -> rank 1;
    # b->z at 9 among w, z (x, y engaged before) -> rank 1; z is cold: also ranked among cold items.
    assert len(result.overall) == 2 and result.overall.ndcg(1).tolist() == [1.0, 1.0]
    assert len(result.cold) == 1 and result.online and result.events == 3


def test_feature_cache_extracts_once_and_again_when_bytes_change(tmp_path: Path) -> None:
    version = FeatureVersion("test-backbone", "p1")
    calls: list[list[str]] = []

    def extract(items):  # noqa: ANN001, ANN202 - the Extract signature
        calls.append([m for m, _ in items])
        return [CorruptMedia("corrupt", "bad") if data == b"bad" else
                ItemFeatures(m, "image", (torch.full((2, 1, 1), float(len(data)), dtype=torch.float16),), version, 0.0)
                for m, data in items]

    for name, data in (("a", b"1"), ("b", b"22")):
        (tmp_path / f"{name}.png").write_bytes(data)
    media = MediaIndex.from_folder(tmp_path, ["a", "b"])
    store = MemoryFeatureStore()
    first = cached_features(store, media, ["a", "b"], version, extract, "test")
    again = cached_features(store, media, ["a", "b"], version, extract, "test")
    assert calls == [["a", "b"]] and [f.maps[0][0, 0, 0].item() for f in again] == [1.0, 2.0]
    assert first[0].extra["sha256"] == again[0].extra["sha256"]
    (tmp_path / "b.png").write_bytes(b"333")
    cached_features(store, media, ["a", "b"], version, extract, "test")
    assert calls[-1] == ["b"]
    (tmp_path / "a.png").write_bytes(b"bad")
    with pytest.raises(MediaFailures, match="1 of 2 media failed, e.g. a: corrupt: bad"):
        cached_features(store, media, ["a", "b"], version, extract, "test")


SPEC = RankerSpec("fixed", lambda data, params: FixedScores(torch.zeros(data.log.num_users, data.log.num_items)))


def test_registry_loads_every_spec_and_a_new_one_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in registry.RANKERS:
        assert registry.load_spec(name).name == name
    with pytest.raises(KeyError, match="unknown ranker 'nope'"):
        registry.load_spec("nope")
    monkeypatch.setitem(registry.RANKERS, "fixed", "tests.test_evaluation:SPEC")
    assert registry.load_spec("fixed") is SPEC


def test_the_study_variants_are_the_registered_hybrid_point_at_other_channels_and_run_when_named() -> None:
    hybrid = registry.load_spec("mmrec-hybrid")
    assert registry.STUDY_VARIANTS == {"mmrec-hybrid-d8", "mmrec-hybrid-d12", "mmrec-hybrid-d16"}
    for name, channels in (("mmrec-hybrid-d8", 8), ("mmrec-hybrid-d12", 12), ("mmrec-hybrid-d16", 16)):
        assert registry.load_spec(name).grid == tuple({**point, "channels": channels} for point in hybrid.grid)
        assert name not in registry.DEFAULT
    assert hybrid.grid[0]["channels"] == 12 and "mmrec-hybrid" in registry.DEFAULT  # since the third round


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fashion_mnist: None) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(out, TINY)
    return out


@pytest.fixture
def small_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mmrec` commands of the test keep their data under tmp_path and run the CNN on CPU at 64 px."""
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MMREC_DEVICE", "cpu")
    monkeypatch.setenv("MMREC_INPUT_SIZE", "64")


@needs_fashion_mnist
@pytest.mark.usefixtures("small_settings")
def test_evaluate_command_on_the_benchmark_and_on_own_files(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", str(tiny), "--prequential", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    names = {"mmrec", "mmrec-hybrid", "most-popular", "bpr-mf", "vbpr", "perfect-perception", "oracle"}  # not the study's variants
    for name in names:
        assert f"\n{name} " in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report["rankers"]) == names
    assert report["rankers"]["mmrec"]["prequential"]["online"]  # our online step ran in the replay
    assert report["rankers"]["mmrec-hybrid"]["prequential"]["online"]
    vbpr = report["rankers"]["vbpr"]
    assert vbpr["params"]["features"] in ("maps", "penultimate") and len(vbpr["tuning"]) == 24
    assert len(vbpr["test"]["overall"]["curves"]["ndcg"]) == 50 and vbpr["prequential"]["online"]
    assert report["counts"]["cold_items"] > 0 and (tmp_path / "r.png").stat().st_size > 10_000
    cache = list((tmp_path / "var" / "evaluation").glob("*/maps.sqlite3"))
    assert len(cache) == 1
    assert report["rankers"]["mmrec-hybrid"]["params"]["memory_epochs"] == 8  # the registered point
    # Own data: the same log and media as a plain file and folder; the references need what it lacks.
    own = ["evaluate", "--interactions", str(tiny / "interactions.csv"), "--media", str(tiny / "media"),
           "--rankers", "most-popular,vbpr"]
    assert main(own) == 0
    assert "\nvbpr " in capsys.readouterr().out
    assert main(["evaluate", "--interactions", str(tiny / "interactions.csv"), "--media", str(tiny / "media"), "--rankers", "oracle"]) == 2
    assert "lacks what these rankers need: {'oracle': ['truth']}" in capsys.readouterr().err


@needs_fashion_mnist
def test_each_channel_count_has_its_own_feature_cache(tiny: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", device="cpu", input_size=64)
    cache = tmp_path / "cache"
    data = EvaluationData.from_folder(tiny, settings, cache)
    default, narrow = data.catalogue(), data.catalogue(4)
    assert [m.shape[1] for m in default.float_maps(slice(0, 1))] == [settings.channels] * settings.n_layers
    assert [m.shape[1] for m in narrow.float_maps(slice(0, 1))] == [4] * settings.n_layers
    assert default.version != narrow.version and data.catalogue(4) is narrow
    files = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.sqlite3")}
    assert sorted(files) == ["maps-d4.sqlite3", "maps.sqlite3"]
    again = EvaluationData.from_folder(tiny, settings, cache).catalogue(4)  # read back, not extracted again
    assert all(torch.equal(a, b) for a, b in zip(narrow.float_maps(), again.float_maps()))
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.sqlite3")} == files


@needs_fashion_mnist
@pytest.mark.usefixtures("small_settings")
def test_evaluate_with_a_projection_fitted_on_the_earlier_items(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", str(tiny), "--rankers", "vbpr", "--own-projection", "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    earlier = report["features"]
    assert earlier.startswith("maps through a channel projection fitted on ") and "seen before the validation period" in earlier
    assert earlier in capsys.readouterr().err
    cache = {p.name for p in (tmp_path / "var" / "evaluation").rglob("*.sqlite3")}
    assert cache == {"maps-own.sqlite3", "penultimate.sqlite3"}  # the shipped projection's maps were never extracted
    assert report["rankers"]["vbpr"]["params"]["features"] in ("maps", "penultimate")


def test_own_projection_is_fitted_on_the_given_items_only(tmp_path: Path) -> None:
    chelsea, coffee = (sample_image(n).read_bytes() for n in ("chelsea.png", "coffee.png"))
    for name, data in (("a", chelsea), ("b", coffee), ("c", b"not an image")):
        (tmp_path / f"{name}.png").write_bytes(data)
    data = EvaluationData(name="t", log=log_of([("a", "a", "click", 0)], ("a",), ("a", "b", "c")), settings=Settings(device="cpu", input_size=32),
                          cache_dir=tmp_path / "cache", media=MediaIndex.from_folder(tmp_path, ["a", "b", "c"]))
    assert data.fit_own_projection(np.array([0, 2])) == ["c (unknown_format)"]
    first = data.projection
    assert first is not None and data.extractor().version.projection == first.version(8)
    data.fit_own_projection(np.array([0, 1]))
    assert data.projection is not None and data.projection.digest != first.digest
    with pytest.raises(ValueError, match="none of the 1 items' media is a decodable image"):
        data.fit_own_projection(np.array([2]))
