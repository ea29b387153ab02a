"""Rankers compared across data sets (`mmrec compare`): pooled NDCG@10 and paired differences
against hand-computed values, and end to end on two real `mmrec evaluate --json` results."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mmrec.cli import main
from mmrec.datasets.visual_taste import TINY, generate
from mmrec.evaluation.pooling import compare


def result(ndcg: dict[str, tuple[float, float]], paired: dict[str, dict[str, tuple[float, float]]],
           cold: bool = True) -> dict[str, Any]:
    """The parts of an `mmrec evaluate --json` document that pooling reads (cold: the same numbers)."""
    def section(name: str, value: float, se: float) -> dict[str, Any]:
        if name == "cold" and not cold:
            value = se = math.nan
        return {"summary": {"ndcg@10": value, "ndcg@10_se": se}}

    return {
        "rankers": {r: {"test": {name: section(name, *v) for name in ("overall", "cold")}} for r, v in ndcg.items()},
        "paired_ndcg@10": {"overall": paired, "cold": paired if cold else {}},
    }


def test_pooled_values_and_differences_count_each_data_set_once() -> None:
    first = result({"a": (0.10, 0.01), "b": (0.08, 0.01), "only-here": (0.5, 0.1)},
                   {"a": {"b": (0.02, 0.006)}, "b": {"a": (-0.02, 0.006)}})
    second = result({"b": (0.14, 0.01), "a": (0.20, 0.02)}, {"a": {"b": (0.06, 0.008)}, "b": {"a": (-0.06, 0.008)}})
    comparison = compare([first, second], ["one", "two"])
    assert comparison.rankers == ("a", "b")  # the rankers every result holds, in the first one's order
    a_minus_b = comparison.paired["overall"]["a"]["b"]
    assert a_minus_b.per_data == ((0.02, 0.006), (0.06, 0.008))
    assert a_minus_b.mean == pytest.approx(0.04)
    assert a_minus_b.se == pytest.approx(0.005)  # sqrt(0.006^2 + 0.008^2) / 2
    assert a_minus_b.z == pytest.approx(8.0)
    assert a_minus_b.spread_se == pytest.approx(0.02)  # sd of (0.02, 0.06) is 0.02 * sqrt(2), over sqrt(2)
    assert comparison.paired["overall"]["b"]["a"].z == pytest.approx(-8.0)
    a = comparison.ndcg["overall"]["a"]
    assert (a.mean, a.se) == (pytest.approx(0.15), pytest.approx(math.sqrt(0.01**2 + 0.02**2) / 2))


def test_a_data_set_without_cold_start_users_makes_the_pooled_cold_numbers_nan_not_an_error() -> None:
    first = result({"a": (0.1, 0.01), "b": (0.1, 0.01)}, {"a": {"b": (0.0, 0.01)}, "b": {"a": (0.0, 0.01)}})
    second = result({"a": (0.1, 0.01), "b": (0.1, 0.01)}, {"a": {"b": (0.0, 0.01)}, "b": {"a": (0.0, 0.01)}}, cold=False)
    comparison = compare([first, second], ["one", "two"])
    assert math.isnan(comparison.paired["cold"]["a"]["b"].mean) and math.isnan(comparison.ndcg["cold"]["a"].mean)
    assert comparison.paired["overall"]["a"]["b"].mean == 0.0 and comparison.paired["overall"]["a"]["b"].z == 0.0


def test_results_with_no_ranker_in_common_are_refused() -> None:
    with pytest.raises(ValueError, match="no ranker in common"):
        compare([result({"a": (0.1, 0.01)}, {}), result({"b": (0.1, 0.01)}, {})], ["one", "two"])


@pytest.mark.usefixtures("fashion_mnist")
def test_compare_command_pools_two_real_evaluations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path / "var"))
    files = []
    for seed in (0, 1):
        folder = tmp_path / f"tiny-{seed}"
        generate(folder, dataclasses.replace(TINY, seed=seed))
        files.append(tmp_path / f"r{seed}.json")
        assert main(["evaluate", str(folder), "--rankers", "most-popular,oracle", "--json", str(files[-1])]) == 0
    capsys.readouterr()
    args = ["compare", *map(str, files), "--names", "s0,s1", "--reference", "oracle",
            "--json", str(tmp_path / "pooled.json"), "--plot", str(tmp_path / "pooled.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "most-popular - oracle" in out and "oracle - most-popular" not in out  # each pair once, in the results order
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    documents = [json.loads(f.read_text()) for f in files]
    per_data = [d["paired_ndcg@10"]["overall"]["oracle"]["most-popular"] for d in documents]
    entry = pooled["paired_ndcg@10"]["overall"]["oracle"]["most-popular"]
    assert entry["per_data"] == per_data
    assert entry["mean"] == pytest.approx((per_data[0][0] + per_data[1][0]) / 2)
    assert entry["se"] == pytest.approx(math.hypot(per_data[0][1], per_data[1][1]) / 2)
    assert entry["spread_se"] == pytest.approx(abs(per_data[0][0] - per_data[1][0]) / 2)
    ndcg = [d["rankers"]["oracle"]["test"]["overall"]["summary"]["ndcg@10"] for d in documents]
    assert pooled["ndcg@10"]["overall"]["oracle"]["mean"] == pytest.approx(sum(ndcg) / 2)
    assert (tmp_path / "pooled.png").stat().st_size > 10_000
    assert main(["compare", *map(str, files), "--plot", str(tmp_path / "x.png"), "--reference", "vbpr"]) == 2
    assert "vbpr not in every result (most-popular, oracle)" in capsys.readouterr().err
    assert main(["compare", *map(str, files), "--plot", str(tmp_path / "x.png"), "--reference", "oracle", "--against", "bpr-mf"]) == 2
    assert not (tmp_path / "x.png").exists()


@pytest.mark.usefixtures("fashion_mnist")
def test_runs_on_one_data_set_are_merged_and_paired_over_the_same_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MMREC_DATA_DIR", str(tmp_path / "var"))
    folders = [tmp_path / "tiny-0", tmp_path / "tiny-1"]
    for seed, folder in enumerate(folders):
        generate(folder, dataclasses.replace(TINY, seed=seed))
    runs = {"both": (folders[0], "most-popular,oracle"), "again": (folders[0], "most-popular"), "other": (folders[1], "oracle")}
    for stem, (folder, rankers) in runs.items():
        assert main(["evaluate", str(folder), "--rankers", rankers, "--json", str(tmp_path / f"{stem}.json")]) == 0
    both = json.loads((tmp_path / "both.json").read_text())
    per_user = both["rankers"]["oracle"]["test"]["overall"]["ndcg@10_per_user"]
    assert len(per_user) == both["counts"]["test_users"]
    assert sum(per_user) / len(per_user) == pytest.approx(both["rankers"]["oracle"]["test"]["overall"]["summary"]["ndcg@10"], abs=1e-6)
    capsys.readouterr()

    # The oracle of one run against most-popular of another: the same pair as inside the first run.
    merged = f"{tmp_path / 'both.json'}+{tmp_path / 'again.json'}"
    assert main(["compare", merged, "--json", str(tmp_path / "merged.json")]) == 0
    pooled = json.loads((tmp_path / "merged.json").read_text())
    assert pooled["data"] == ["both+again"] and pooled["rankers"] == ["most-popular", "oracle", "most-popular@again"]
    for section in ("overall", "cold"):
        across = pooled["paired_ndcg@10"][section]["oracle"]["most-popular@again"]["per_data"][0]
        within = both["paired_ndcg@10"][section]["oracle"]["most-popular"]
        assert across == pytest.approx(within, abs=1e-6)
        assert pooled["paired_ndcg@10"][section]["most-popular"]["most-popular@again"]["mean"] == 0.0

    # Runs on different data sets, or from before per-user values were written, are refused.
    assert main(["compare", f"{tmp_path / 'both.json'}+{tmp_path / 'other.json'}"]) == 2
    assert "other is not a run on the same data set and split as both" in capsys.readouterr().err
    old = json.loads((tmp_path / "again.json").read_text())
    del old["rankers"]["most-popular"]["test"]["overall"]["ndcg@10_per_user"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(["compare", f"{tmp_path / 'both.json'}+{tmp_path / 'old.json'}"]) == 2
    assert "old holds no per-user values" in capsys.readouterr().err
