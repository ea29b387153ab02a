"""The report of `mmrec bench all`: report.md (one table: every figure beside its target) and
report.png (matplotlib, Agg), from the benchmarks' JSON results."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _get(result: dict[str, Any] | None, *path: str, default: Any = None) -> Any:
    value: Any = result
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict) and "median" in value:
        return f"{_num(value['median'], digits)} [{_num(value['min'], digits)}-{_num(value['max'], digits)}]"
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _median(value: Any) -> float | None:
    if isinstance(value, dict):
        return value.get("median")
    return value


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, value, target, met) rows."""
    by: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        by.setdefault(result["bench"], []).append(result)
    out: list[tuple[str, str, str, str, str]] = []
    for scoring in by.get("scoring", []):
        f = scoring["figures"]
        label = f"scoring ({scoring['machine']['threads']} thread{'s' if scoring['machine']['threads'] > 1 else ''}, load {scoring['machine']['load_1m']})"
        ratio, roof = _median(f.get("ratio_vs_naive")), _median(f.get("roofline_fraction"))
        out += [
            (label, "pairs/s, batched (64 users x 4096 items)", _num(f.get("pairs_per_s")), "", ""),
            (label, "naive per-pair reference, pairs/s", _num(f.get("naive_pairs_per_s")), "", ""),
            (label, "ratio_vs_naive", _num(f.get("ratio_vs_naive")), ">= 100", _verdict(None if ratio is None else ratio >= 100)),
            (label, "useful GFLOP/s / measured torch.mm peak GFLOP/s", f"{_num(f.get('achieved_gflops'))} / {_num(f.get('peak_gflops'))}", "", ""),
            (label, "roofline_fraction", _num(f.get("roofline_fraction")), ">= 0.30", _verdict(None if roof is None else roof >= 0.30)),
            (label, "shortlist pairs/s (1 user x 2048 items)", _num(f.get("shortlist_pairs_per_s")), "", ""),
        ]
    for update in by.get("update", []):
        f = update["figures"]
        event, step = f.get("event", {}), f.get("step", {})
        out += [
            ("update", "click: examples + step, p50 / p99 ms", f"{_num(event.get('p50_ms'))} / {_num(event.get('p99_ms'))}", "p99 < 1 ms", _verdict(event.get("p99_ms", 99) < 1.0)),
            ("update", "click, repeated after the baseline: p50 / p99 ms", f"{_num(_get(f, 'event_repeat', 'p50_ms'))} / {_num(_get(f, 'event_repeat', 'p99_ms'))}", "", ""),
            ("update", "step alone, p50 / p99 ms", f"{_num(step.get('p50_ms'))} / {_num(step.get('p99_ms'))}", "p99 < 1 ms", _verdict(step.get("p99_ms", 99) < 1.0)),
            ("update", "steps/s (one thread)", _num(event.get("per_s")), "", ""),
            ("update", "autograd baseline click, p50 / p99 ms", f"{_num(_get(f, 'autograd_event', 'p50_ms'))} / {_num(_get(f, 'autograd_event', 'p99_ms'))}", "", ""),
            ("update", "speedup vs autograd (p50)", _num(f.get("speedup_p50_vs_autograd")), "", ""),
            ("update", f"click in batches of {update['config'].get('batch')} (the learn agent's): p50 ms per event; speedup", f"{_num(_get(f, 'event_batched', 'per_event_p50_ms'))}; {_num(f.get('batched_speedup_p50'))}", "", ""),
        ]
    for extract in by.get("extract", []):
        for key, value in extract["figures"].items():
            threads = extract["config"].get("decode_threads")
            out.append((
                "extract",
                f"{key.replace('_', ' ')}: CNN / end-to-end ({threads} decoding threads) / end-to-end (one) images/s",
                f"{_num(value['cnn_images_per_s'])} / {_num(value['end_to_end_images_per_s'])} / {_num(value.get('end_to_end_one_decoder_images_per_s'))}",
                "", "",
            ))
    for retrieval in by.get("retrieval", []):
        for size, row in retrieval["figures"].items():
            label = f"retrieval {int(size):,} items"
            r100, r20 = row.get("recall@100", {}), row.get("recall@20", {})
            refresh = row.get("refresh@100_ms", {})
            big = int(size) >= 1_000_000
            out += [
                (label, f"recall@100 (shortlist {r100.get('shortlist')}), mean / worst user", f"{_num(r100.get('mean'))} / {_num(r100.get('min'))}",
                 ">= 0.95" if big else "", _verdict(r100.get("mean", 0) >= 0.95) if big else ""),
                (label, f"recall@20 (shortlist {r20.get('shortlist')}), mean / worst user", f"{_num(r20.get('mean'))} / {_num(r20.get('min'))}", "", ""),
                (label, "refresh of one user (top-100), p50 / p90 / p99 ms", f"{_num(refresh.get('p50'))} / {_num(refresh.get('p90'))} / {_num(refresh.get('p99'))}",
                 "< 20 ms" if big else "", _verdict(refresh.get("p99", 1e9) < 20) if big else ""),
                (label, "refresh (top-20), p50 / p99 ms", f"{_num(_get(row, 'refresh@20_ms', 'p50'))} / {_num(_get(row, 'refresh@20_ms', 'p99'))}", "", ""),
                (label, "exact refresh of one user, ms", _num(row.get("exact_refresh_ms_p50")), "", ""),
                (label, "index: build s, bytes/item, partitioned, scan dtype", f"{_num(row.get('index_build_s'))}, {_num(row.get('index_bytes_per_item'))}, {row.get('partitioned')}, {row.get('scan_dtype') or '-'}", "", ""),
            ]
    for stream in by.get("stream", []):
        f = stream["figures"]
        target = f.get("target_rate") or {}
        best = f.get("at_sustained") or {}
        floor = f.get("floor_ms") or {}
        lat = target.get("latency_ms", {})
        out += [
            ("stream", f"floor: aiokafka round trip p50 / p99 ms (fetch wait {stream['config'].get('fetch_max_wait_ms')} ms)", f"{_num(floor.get('p50'))} / {_num(floor.get('p99'))}", "", ""),
            ("stream", "floor with aiokafka's default fetch wait, p50 / p99 ms", f"{_num(_get(f, 'floor_default_client_ms', 'p50'))} / {_num(_get(f, 'floor_default_client_ms', 'p99'))}", "", ""),
            ("stream", f"at {target.get('offered_per_s')}/s offered: answered/s, share", f"{_num(target.get('answered_per_s'))}, {_num(target.get('answered_share'))}", ">= 1000/s", _verdict(bool(target.get("sustained")))),
            ("stream", f"at {target.get('offered_per_s')}/s: latency p50 / p99 ms", f"{_num(lat.get('p50'))} / {_num(lat.get('p99'))}", "p99 < 100 ms", _verdict(lat.get("p99", 1e9) < 100)),
            ("stream", "sustained rate /s (latency p50 / p99 ms there)", f"{_num(f.get('sustained_rate'))} ({_num(_get(best, 'latency_ms', 'p50'))} / {_num(_get(best, 'latency_ms', 'p99'))})", "", ""),
            ("stream", "ratio_vs_floor p50 / p99", f"{_num(f.get('ratio_vs_floor_p50'))} / {_num(f.get('ratio_vs_floor_p99'))}", "", ""),
            ("stream", "worker CPU ms per interaction offered, resident MB", f"{_num(target.get('worker_cpu_ms_per_event'))}, {_num(target.get('worker_rss_mb'))}", "", ""),
            ("stream", "worker model ms per interaction: online step + one user's refresh", f"{_num(_get(target, 'model_ms_per_interaction', 'step'))} + {_num(_get(target, 'model_ms_per_interaction', 'refresh'))}", "", ""),
        ]
        pipeline = f.get("pipeline_floor") or {}
        budget = f.get("cpu_budget") or {}
        if pipeline:
            rate = pipeline.get("offered_per_s")
            out += [
                ("stream", f"pipeline floor (4 hops, no model) at {rate}/s: answered/s; p50 / p99 ms", f"{_num(pipeline.get('answered_per_s'))}; {_num(_get(pipeline, 'latency_ms', 'p50'))} / {_num(_get(pipeline, 'latency_ms', 'p99'))}", "", ""),
                ("stream", "pipeline floor cores: broker, load generator, relay", ", ".join(_num(_get(pipeline, "cores", k)) for k in ("broker", "load_generator", "relay")), "", ""),
            ]
        if budget:
            out.append(
                ("stream", f"cores needed at {target.get('offered_per_s')}/s, at least: traffic + model (of {budget.get('cores')})",
                 f"{_num(budget.get('traffic_cores'))} + {_num(budget.get('model_cores'))} = {_num(budget.get('lower_bound_cores'))}", f"< {budget.get('cores')}", _verdict(budget.get("fits")))
            )
    return out


def write_report(results: list[dict[str, Any]], out: Path, total_seconds: float) -> str:
    table = ["| benchmark | figure | value (median [range]) | target | met |", "|---|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows(results)]
    machine = results[0]["machine"] if results else {}
    commands = sorted({r.get("command", "") for r in results})
    text = "\n".join(
        [
            "# mmrec benchmarks",
            "",
            f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}, CUDA: {machine.get('cuda') or 'none'}. "
            f"Total {total_seconds:.0f} s. Every ratio is measured within one run; `load` is the 1-minute load average when a benchmark started.",
            "",
            *table,
            "",
            "Commands (each printed one JSON object; all of them: results.jsonl):",
            "",
            *[f"    {c}" for c in commands],
            "",
        ]
    )
    (out / "report.md").write_text(text)
    _plot(results, out / "report.png")
    return text


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    by = {r["bench"]: r for r in results}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    scorings = [r for r in results if r["bench"] == "scoring"]
    if scorings:
        labels, values = ["naive"], [scorings[0]["figures"]["naive_pairs_per_s"]]
        for r in scorings:
            labels.append(f"batched, {r['machine']['threads']} thr")
            values.append(_median(r["figures"]["pairs_per_s"]))
        labels.append("shortlist path")
        values.append(_median(scorings[0]["figures"]["shortlist_pairs_per_s"]))
        ax.bar(labels, values, color=["grey"] + ["tab:blue"] * len(scorings) + ["tab:cyan"])
        ax.set_yscale("log")
        ax.set_ylabel("user-item pairs / s")
        ax.set_title("scoring")
    ax = axes[0][1]
    if "retrieval" in by:
        sizes = sorted(int(s) for s in by["retrieval"]["figures"])
        rows_ = [by["retrieval"]["figures"][str(s)] for s in sizes]
        ax.plot(sizes, [r["recall@100"]["mean"] for r in rows_], "o-", label="recall@100 (mean)")
        ax.plot(sizes, [r["recall@20"]["mean"] for r in rows_], "s-", label="recall@20 (mean)")
        ax.set_xscale("log")
        ax.set_ylim(0.5, 1.01)
        ax.axhline(0.95, color="grey", lw=0.8, ls="--")
        ax2 = ax.twinx()
        ax2.plot(sizes, [r["refresh@100_ms"]["p99"] for r in rows_], "r^--", label="refresh p99 ms")
        ax2.set_ylabel("refresh p99 (ms)", color="r")
        ax.set_xlabel("catalogue items")
        ax.set_title("retrieval: recall vs exact top-K, refresh latency")
        ax.legend(loc="lower left")
    ax = axes[1][0]
    if "update" in by:
        f = by["update"]["figures"]
        names = ["closed form", "autograd"]
        p50 = [f["event"]["p50_ms"], f["autograd_event"]["p50_ms"]]
        p99 = [f["event"]["p99_ms"], f["autograd_event"]["p99_ms"]]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
        ax.set_xticks(list(x), names)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("ms per click")
        ax.set_title("online update")
        ax.legend()
    ax = axes[1][1]
    if "stream" in by:
        f = by["stream"]["figures"]
        labels = ["round trip"]
        p50s, p99s = [f["floor_ms"]["p50"]], [f["floor_ms"]["p99"]]
        pipeline = f.get("pipeline_floor")
        if pipeline:
            labels.append(f"4 hops, no model\n{pipeline['offered_per_s']:.0f}/s")
            p50s.append(pipeline["latency_ms"]["p50"])
            p99s.append(pipeline["latency_ms"]["p99"])
        for run in [f.get("target_rate"), f.get("at_sustained")]:
            if run:
                labels.append(f"worker\n{run['offered_per_s']:.0f}/s")
                p50s.append(run["latency_ms"]["p50"])
                p99s.append(run["latency_ms"]["p99"])
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50s, 0.4, label="p50")
        ax.bar([i + 0.2 for i in x], p99s, 0.4, label="p99")
        ax.set_xticks(list(x), labels)
        ax.set_yscale("log")
        ax.axhline(100, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("interaction -> recommendation (ms)")
        ax.set_title("stream")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
