"""The benchmarks' own pieces: the FLOP count, the report, and tiny
runs of the commands (figures are not asserted: performance is measured by `make bench`, not tests)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrec.bench.report import write_report
from mmrec.bench.scoring import useful_flops_per_pair
from mmrec.cli import main
from mmrec.model import ModelConfig, ParamLayout, SharedParams


def test_useful_flops_of_the_default_configuration():
    # per 14x14 layer: 2*8*9*196 + 2*9*49 + 4*49 + 2; the 7x7 layer pools to 4x4
    layer14 = 2 * 8 * 9 * 196 + 2 * 9 * 49 + 4 * 49 + 2
    layer7 = 2 * 8 * 9 * 49 + 2 * 9 * 16 + 4 * 16 + 2
    assert useful_flops_per_pair(ModelConfig(), [(14, 14), (14, 14), (7, 7)]) == 2 * layer14 + layer7 == 66_018


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    return json.loads(lines[0])


def test_update_and_scoring_commands_print_one_json_object_with_their_configuration(capsys):
    update = run_json(["bench", "update", "--json", "--steps", "120", "--items", "40"], capsys)
    assert update["bench"] == "update" and update["config"]["P"] == 82
    assert {"p50_ms", "p99_ms", "per_s"} <= set(update["figures"]["event"])
    scoring = run_json(["bench", "scoring", "--json", "--users", "2", "--items", "16", "--rounds", "1"], capsys)
    assert scoring["config"]["N"] == 3 and scoring["machine"]["threads"] >= 1
    assert {"ratio_vs_naive", "roofline_fraction", "pairs_per_s", "peak_gflops"} <= set(scoring["figures"])


def test_retrieval_command_on_a_small_memory_mapped_catalogue(capsys, tmp_path: Path):
    out = run_json(
        ["bench", "retrieval", "--json", "--sizes", "600", "--users", "2", "--k", "5", "--cache", str(tmp_path), "--in-memory-max", "100"],
        capsys,
    )
    row = out["figures"]["600"]
    assert 0 <= row["recall@5"]["mean"] <= 1 and row["refresh@5_ms"]["p50"] > 0
    assert (tmp_path / "concepts-600" / "complete").exists()


def test_report_has_the_table_and_the_figure(tmp_path: Path):
    machine = {"cpu": "x", "cores": 2, "threads": 1, "torch": "t", "cuda": None, "load_1m": 0.5}
    spread = {"median": 2.0, "min": 1.0, "max": 3.0}
    results = [
        {"bench": "scoring", "machine": machine, "config": {}, "figures": {
            "pairs_per_s": spread, "naive_pairs_per_s": 10.0, "ratio_vs_naive": spread, "achieved_gflops": spread,
            "peak_gflops": spread, "roofline_fraction": {"median": 0.4, "min": 0.3, "max": 0.5}, "shortlist_pairs_per_s": spread}},
        {"bench": "update", "machine": machine, "config": {}, "figures": {
            "event": {"p50_ms": 0.3, "p99_ms": 0.8, "per_s": 3000.0}, "step": {"p50_ms": 0.2, "p99_ms": 0.5, "per_s": 4000.0},
            "autograd_event": {"p50_ms": 1.5, "p99_ms": 3.0, "per_s": 600.0}, "speedup_p50_vs_autograd": 5.0}},
        {"bench": "retrieval", "machine": machine, "config": {}, "figures": {"1000000": {
            "recall@100": {"mean": 0.97, "min": 0.9, "shortlist": 1000}, "recall@20": {"mean": 0.99, "min": 0.95, "shortlist": 200},
            "refresh@100_ms": {"p50": 10.0, "p99": 15.0}, "refresh@20_ms": {"p50": 5.0, "p99": 8.0}}}},
    ]
    text = write_report(results, tmp_path, total_seconds=12.0)
    assert "| scoring (1 thread, load 0.5) | ratio_vs_naive | 2 [1-3] | >= 100 | **no** |" in text
    assert "| update | click: examples + step, p50 / p99 ms | 0.3 / 0.8 | p99 < 1 ms | yes |" in text
    assert "recall@100 (shortlist 1000), mean / worst user | 0.97 / 0.9 | >= 0.95 | yes |" in text
    assert (tmp_path / "report.md").read_text() == text
    assert (tmp_path / "report.png").stat().st_size > 10_000
