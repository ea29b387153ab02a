"""The benchmarks' own pieces: the FLOP count, the report, and tiny
runs of the commands (figures are not asserted: performance is measured by `make bench`, not tests)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrec.bench.report import write_report
from mmrec.bench.scoring import useful_flops_per_pair
from mmrec.bench.synthetic import SHAPES, MemmapCatalogue, write_memmap
from mmrec.cli import main
from mmrec.model import ModelConfig, ParamLayout, SharedParams
from worker.soak_bench import summarize
from worker.stream_bench import cpu_budget, model_ms_per_interaction


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


def test_extract_command_reports_the_decoding_threads_beside_one(capsys):
    out = run_json(["bench", "extract", "--json", "--batch-sizes", "2", "--input-size", "64", "--decode-threads", "2", "--seconds", "0.05"], capsys)
    assert out["config"]["decode_threads"] == 2 and out["config"]["devices"][0] == "cpu"
    row = out["figures"]["cpu_batch2"]
    assert row["decode_speedup"] == pytest.approx(row["end_to_end_images_per_s"] / row["end_to_end_one_decoder_images_per_s"])
    assert row["cnn_images_per_s"] > 0


def test_retrieval_command_on_a_small_memory_mapped_catalogue(capsys, tmp_path: Path):
    out = run_json(
        ["bench", "retrieval", "--json", "--sizes", "600", "--users", "2", "--k", "5", "--cache", str(tmp_path), "--in-memory-max", "100"],
        capsys,
    )
    row = out["figures"]["600"]
    assert 0 <= row["recall@5"]["mean"] <= 1 and row["refresh@5_ms"]["p50"] > 0
    assert (tmp_path / "concepts-600" / "complete").exists()


def test_the_memory_mapped_catalogue_serves_the_rows_of_its_files(tmp_path: Path):
    write_memmap(tmp_path, "concepts", 300, seed=1, workers=1)
    raw = [np.fromfile(tmp_path / f"layer{j}.f16", dtype=np.float16).reshape(300, *s) for j, s in enumerate(SHAPES)]
    full, prefix = MemmapCatalogue(tmp_path, 300), MemmapCatalogue(tmp_path, 300, rows=120)
    assert (len(full), len(prefix)) == (300, 120) and full.layer_shapes == tuple(SHAPES)
    for got, want in zip(prefix.float_maps(torch.tensor([119, 3, 57])), raw):
        assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want[[119, 3, 57]]).float())
    for got, want in zip(full.float_maps(slice(200, 300)), raw):
        assert torch.equal(got, torch.from_numpy(want[200:300]).float())
    with pytest.raises(IndexError):
        prefix.float_maps(torch.tensor([150]))


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
        {"bench": "stream", "machine": machine, "config": {"fetch_max_wait_ms": 10}, "figures": {
            "floor_ms": {"p50": 4.0, "p99": 8.0}, "sustained_rate": None,
            "target_rate": {"offered_per_s": 1000.0, "answered_per_s": 200.0, "answered_share": 0.9, "sustained": False,
                            "latency_ms": {"p50": 900.0, "p99": 4000.0}, "model_ms_per_interaction": {"step": 0.7, "refresh": 2.5, "total": 3.2}},
            "pipeline_floor": {"offered_per_s": 1000.0, "answered_per_s": 990.0, "latency_ms": {"p50": 50.0, "p99": 130.0},
                               "cores": {"broker": 0.9, "load_generator": 0.2, "relay": 0.3}},
            "cpu_budget": {"cores": 2, "traffic_cores": 1.1, "model_cores": 3.2, "lower_bound_cores": 4.3, "fits": False}}},
    ]
    text = write_report(results, tmp_path, total_seconds=12.0)
    assert "| scoring (1 thread, load 0.5) | ratio_vs_naive | 2 [1-3] | >= 100 | **no** |" in text
    assert "| update | click: examples + step, p50 / p99 ms | 0.3 / 0.8 | p99 < 1 ms | yes |" in text
    assert "recall@100 (shortlist 1000), mean / worst user | 0.97 / 0.9 | >= 0.95 | yes |" in text
    assert "| stream | worker model ms per interaction: online step + one user's refresh | 0.7 + 2.5 |  |  |" in text
    assert "| stream | pipeline floor cores: broker, load generator, relay | 0.9, 0.2, 0.3 |  |  |" in text
    assert "| stream | cores needed at 1000.0/s, at least: traffic + model (of 2) | 1.1 + 3.2 = 4.3 | < 2 | **no** |" in text
    assert (tmp_path / "report.md").read_text() == text
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_soak_summary_tells_new_users_state_from_a_leak():
    minutes = [0.5 * i for i in range(1, 61)]
    users = [100_000 * (1 - math.exp(-200 * 60 * m / 100_000)) for m in minutes]
    wobble = [0.3 * math.sin(7 * m) for m in minutes]
    flat = summarize(minutes, [700 + w for w in wobble], users, warmup_minutes=5, max_slope_mb_per_min=1.0)
    assert flat["fit_from_minute"] == 5 and flat["flat"] and flat["verdict"].startswith("flat")
    assert abs(flat["slope_mb_per_min"]) < 0.1 and flat["users_seen_at_warmup_end"] == int(users[9])

    per_user = summarize(minutes, [600 + 1000 * u / 2**20 + w for u, w in zip(users, wobble)], users, 5, 1.0)
    assert not per_user["flat"] and per_user["slope_mb_per_min"] > 1.0
    assert per_user["bytes_per_new_user"] == pytest.approx(1000, rel=0.05) and abs(per_user["slope_beyond_users_mb_per_min"]) < 0.1
    assert per_user["verdict"].startswith("grows with the users seen")

    leak = summarize(minutes, [600 + 2 * m + w for m, w in zip(minutes, wobble)], [999] * 30 + [1000] * 30, 5, 1.0)
    assert leak["slope_mb_per_min"] == pytest.approx(2, abs=0.05) and leak["rss_mb_at_end"] == pytest.approx(660, abs=0.5)
    assert not leak["flat"] and leak["bytes_per_new_user"] is None and "no new users" in leak["verdict"]
    memtables = summarize(minutes, [600 + 2 * m + w for m, w in zip(minutes, wobble)], [1000] * 60, 5, 1.0, memtables_mb_per_min=1.8)
    assert memtables["slope_beyond_memtables_mb_per_min"] == pytest.approx(0.2, abs=0.05)
    assert memtables["verdict"].startswith("grows with the RocksDB memtables")

    short = summarize(minutes[:4], [600, 610, 620, 630], users[:4], 0.5, 1.0)
    assert short["bytes_per_new_user"] is None and "cannot tell" in short["verdict"]


def test_soak_command_runs_one_worker_on_the_embedded_broker(capsys, tmp_path: Path):
    out = run_json(
        ["bench", "soak", "--json", "--minutes", "0.25", "--window-s", "5", "--warmup-minutes", "0.05", "--rate", "40",
         "--users", "500", "--items", "300", "--out", str(tmp_path)],
        capsys,
    )
    assert out["bench"] == "soak" and out["config"]["warmup_minutes"] == 0.05
    windows = out["figures"]["windows"]
    assert len(windows) == 3 and windows[-1]["minute"] == pytest.approx(0.25, abs=0.02)
    assert {"sent_per_s", "answered_per_s", "latency_ms", "overdue", "worker_rss_mb", "worker_cpu", "broker_rss_mb", "users_seen"} <= set(windows[0])
    assert sum(w["answered_per_s"] for w in windows) > 0 and all(w["worker_rss_mb"] > 0 for w in windows)
    assert all(w["latency_ms"]["p50"] > 0 for w in windows if w["answered_per_s"] > 0)
    summary = out["figures"]["summary"]
    assert {"rss_mb_at_warmup_end", "rss_mb_at_end", "slope_mb_per_min", "threshold_mb_per_min", "flat", "verdict"} <= set(summary)
    assert out["figures"]["after_warmup"]["latency_ms"]["p50_median"] > 0
    assert out["figures"]["rocksdb_memtables_at_end"]["entries"] > 0
    assert json.loads((tmp_path / "soak.json").read_text())["figures"] == out["figures"]
    assert (tmp_path / "soak.png").stat().st_size > 10_000


def test_stream_command_with_split_roles_runs_a_learn_and_a_score_process(capsys):
    """--roles split: the layout deploy/kubernetes runs (user updates travel learn -> score on Kafka)."""
    out = run_json(
        ["bench", "stream", "--json", "--roles", "split", "--rate", "50", "--seconds", "4", "--fallback-rates",
         "--users", "200", "--items", "200"],
        capsys,
    )
    assert out["config"]["role"] == "learn+score"
    measured = out["figures"]["target_rate"]
    assert measured["answered_per_s"] > 0 and measured["latency_ms"]["p50"] > 0 and measured["worker_rss_mb"] > 0
    metrics = out["figures"]["worker_metrics"]
    assert metrics["learn:mmrec_online_step_seconds_count"] > 0 and metrics["score:mmrec_active_users"] > 0
    model = measured["model_ms_per_interaction"]
    assert model["step"] > 0 and model["refresh"] > 0 and model["total"] == model["step"] + model["refresh"]
    assert set(measured["cores"]) == {"broker", "load_generator", "worker"} and measured["cores"]["worker"] > 0
    floor = out["figures"]["pipeline_floor"]
    assert floor["answered_share"] > 0.9 and floor["cores"]["relay"] > 0 and floor["cores"]["broker"] > 0
    budget = out["figures"]["cpu_budget"]
    assert budget["lower_bound_cores"] == budget["traffic_cores"] + budget["model_cores"]


def test_model_time_per_interaction_is_a_step_plus_one_users_share_of_a_refresh():
    """Deltas between two scrapes, summed over roles: 3 steps in 0.003 s, 4 users refreshed in 0.02 s."""
    before = {"learn:mmrec_online_step_seconds_sum": 1.0, "learn:mmrec_online_step_seconds_count": 10.0,
              "score:mmrec_refresh_seconds_sum": 2.0, "score:mmrec_refreshed_users_total": 5.0}
    after = {"learn:mmrec_online_step_seconds_sum": 1.003, "learn:mmrec_online_step_seconds_count": 13.0,
             "score:mmrec_refresh_seconds_sum": 2.02, "score:mmrec_refreshed_users_total": 9.0}
    ms = model_ms_per_interaction(before, after)
    assert ms["step"] == pytest.approx(1.0) and ms["refresh"] == pytest.approx(5.0) and ms["total"] == pytest.approx(6.0)
    budget = cpu_budget(1000.0, {"cores": {"broker": 0.9, "load_generator": 0.2, "relay": 0.3}}, {"model_ms_per_interaction": ms})
    assert budget["model_cores"] == pytest.approx(6.0) and budget["lower_bound_cores"] == pytest.approx(7.1) and not budget["fits"]
