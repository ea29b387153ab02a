"""`mmrec bench soak`: one `mmrec worker` (role all) on the embedded broker under a steady load for
--minutes, sampled every --window-s: interactions sent and answered per second, the latency p50 /
p99 / max of the answers read in the window, the worker's resident memory and CPU, the broker's
resident memory, and the users seen so far. Writes --out/soak.json (the printed object) and
--out/soak.png (throughput, latency, memory against minutes; warm-up shaded).

The load and the latency are `mmrec bench stream`'s (worker/stream_bench.py): interactions of
uniformly random users among --users on random items of a synthetic catalogue, paced at --rate,
each timed from the producer to the recommendation it triggered.

Memory after warm-up: the slope of a least-squares line through the worker's RSS, against a stated
threshold (--max-slope-mb-per-min). Two causes of growth are not leaks:
- new users: they keep arriving during the run (after n events about U (1 - exp(-n / U)) of U users
  are seen) and the worker keeps state for each (its active users for active_user_window_s, ~1 KB
  each, worker/refresh.py). The summary also fits RSS against time and users seen together, when
  the users curve bends enough to tell the two apart, and its verdict says which explains the growth.
  With few --users (all seen during warm-up) any growth left is not theirs.
- RocksDB memtables: every write of a user's state stays in memory until its partition's memtable
  reaches the write buffer size (MMREC_ROCKSDB_WRITE_BUFFER_MB, 4 MB; faust's own default, 64 MB,
  held writes for hours) and is flushed. The soak reads what they held at the end from the worker's RocksDB LOGs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.stream_bench import RunningWorker, Session, add_worker_arguments, cpu_seconds, latency_figures, rss_mb, scrape


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="duration of the load")
    parser.add_argument("--rate", type=float, default=50.0, help="interactions per second offered (measured on 2 cores shared with another busy process: "
                        "50/s keeps p99 near 0.1 s, 75/s and up fall behind)")
    parser.add_argument("--window-s", type=float, default=30.0, help="seconds per sample")
    parser.add_argument("--warmup-minutes", type=float, default=None, help="left out of the memory fit (default: a sixth of the run, at most 5)")
    parser.add_argument("--max-slope-mb-per-min", type=float, default=1.0, help="RSS slope after warm-up under which memory counts as flat")
    parser.add_argument("--overdue-s", type=float, default=10.0, help="an interaction unanswered this long counts as overdue")
    parser.add_argument("--out", type=Path, default=Path("out/bench/soak"), help="folder for soak.json and soak.png")
    add_worker_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from mmrec.bench.common import emit

    warmup = min(5.0, args.minutes / 6) if args.warmup_minutes is None else args.warmup_minutes
    if not 0 <= warmup < args.minutes:
        raise SystemExit(f"--warmup-minutes {warmup} must be under --minutes {args.minutes}")
    windows, memtables, config, notes = asyncio.run(_main(args))
    config["warmup_minutes"] = warmup
    summary = summarize([w["minute"] for w in windows], [w["worker_rss_mb"] for w in windows], [w["users_seen"] for w in windows],
                        warmup, args.max_slope_mb_per_min, memtables["mb_per_min"] if memtables else 0.0)
    figures = {"summary": summary, "rocksdb_memtables_at_end": memtables, "after_warmup": _after_warmup(windows, warmup), "windows": windows}
    result = emit("soak", config, figures, notes, as_json=args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(windows, summary, args.out / "soak.png")
    return result


async def _main(args: argparse.Namespace) -> tuple[list[dict], dict | None, dict, list[str]]:
    from worker.embedded_broker import EmbeddedBroker
    from worker.main import create_topics
    from worker.stream_bench import bench_settings, remove_folder, running_worker, worker_config

    folder = Path(tempfile.mkdtemp(prefix="mmrec-soak-"))
    with EmbeddedBroker() as broker:
        settings = bench_settings(broker.bootstrap, folder, args.torch_threads)
        await create_topics(settings)
        async with running_worker(settings, args.items, args.fetch_wait_ms) as worker:
            session = Session(settings, worker.media, args.users, args.fetch_wait_ms)
            await session.start()
            try:
                windows = await _soak(session, worker, broker.pid, args)
            finally:
                await session.stop()
    memtables = _rocksdb_memtables(folder, args.minutes)
    notes = remove_folder(folder, args.keep)
    config = {
        "minutes": args.minutes, "rate": args.rate, "window_s": args.window_s, "users": args.users, "items": args.items,
        "item_kind": "concepts (synthetic)", "max_slope_mb_per_min": args.max_slope_mb_per_min, "overdue_s": args.overdue_s,
        "active_user_window_s": settings.active_user_window_s, **worker_config(settings, args.fetch_wait_ms),
        "catalogue_inject_s": worker.inject_s, "worker_ready_s": worker.ready_s, "out": str(args.out),
    }
    notes += [
        "latency: from handing an interaction to the producer to reading the recommendation it triggered (same process clock); "
        "a window's figures are those of the answers read in it",
        "worker_rss_mb: the worker process's VmRSS; broker_rss_mb: Tansu's, which keeps every message in memory (grows by design)",
        "users_seen: distinct user ids sent so far; active_users, users_held: the worker's mmrec_active_users and mmrec_users_held",
        "overdue: interactions sent over overdue_s before the window's end and still unanswered (the backlog; also the rare event "
        "whose refresh was merged, debounced, with a later one of the same user's)",
        "rocksdb_memtables_at_end: the worker's table writes held in memory when it stopped (its RocksDB LOGs; mb_per_min over the "
        "whole load, they start empty): every write of a user's state adds to them until a memtable reaches the "
        "write buffer size (MMREC_ROCKSDB_WRITE_BUFFER_MB per partition's database) and is flushed",
        "the producer, consumer, broker and worker share the machine",
    ]
    return windows, memtables, config, notes


def _rocksdb_memtables(folder: Path, minutes: float) -> dict | None:
    """What the worker's RocksDB memtables held when it stopped, from the last flush each database's
    LOG records (faust flushes on close), and per minute of a load of `minutes`; None without RocksDB."""
    flushes = []
    for log in folder.rglob("LOG"):
        events = [line for line in log.read_text(errors="replace").splitlines() if '"event": "flush_started"' in line]
        if events:
            flushes.append(json.loads(events[-1][events[-1].index("{"):]))
    if not flushes:
        return None
    mb = sum(f["memory_usage"] for f in flushes) / 2**20
    return {"databases": len(flushes), "entries": sum(f["num_entries"] for f in flushes), "mb": mb, "mb_per_min": mb / minutes}


async def _soak(session: Session, worker: RunningWorker, broker_pid: int, args: argparse.Namespace) -> list[dict]:
    """Paces --rate interactions for --minutes and samples every --window-s (a progress line each on stderr)."""
    total_s = 60 * args.minutes
    pacer = asyncio.create_task(session.pace(args.rate, total_s))
    start = last = time.perf_counter()
    cpu, sent = cpu_seconds(worker.pid), session.counter
    windows = []
    for i in range(1, math.ceil(total_s / args.window_s) + 1):
        end_s = min(i * args.window_s, total_s)
        await asyncio.sleep(max(0.0, start + end_s - time.perf_counter()))
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.process.returncode} (--keep keeps its log)")
        metrics = await asyncio.to_thread(scrape, session.settings)
        now, cpu_now = time.perf_counter(), cpu_seconds(worker.pid)
        answers = session.take_answers()
        windows.append({
            "minute": end_s / 60,  # the window's end as scheduled (its rates use the time measured)
            "sent_per_s": (session.counter - sent) / (now - last),
            "answered_per_s": len(answers) / (now - last),
            "latency_ms": latency_figures([a.answered_at - a.sent_at for a in answers]),
            "overdue": session.overdue(now - args.overdue_s),
            "worker_rss_mb": rss_mb(worker.pid),
            "worker_cpu": (cpu_now - cpu) / (now - last),
            "broker_rss_mb": rss_mb(broker_pid),
            "users_seen": len(session.users_seen),
            "active_users": metrics.get("mmrec_active_users"),
            "users_held": metrics.get("mmrec_users_held"),
        })
        print(_progress(windows[-1], args.minutes), file=sys.stderr, flush=True)
        last, cpu, sent = now, cpu_now, session.counter
    await pacer
    return windows


def _progress(window: dict, minutes: float) -> str:
    latency = window["latency_ms"]
    return (f"soak {window['minute']:5.2f}/{minutes:g} min: {window['answered_per_s']:4.0f}/s answered of {window['sent_per_s']:4.0f}/s, "
            f"p50 {latency['p50']:.0f} ms, p99 {latency['p99']:.0f} ms, overdue {window['overdue']}, worker {window['worker_rss_mb']:.0f} MB "
            f"{window['worker_cpu']:.0%} CPU, broker {window['broker_rss_mb']:.0f} MB, users seen {window['users_seen']:,}")


def _after_warmup(windows: list[dict], warmup_minutes: float) -> dict:
    """Throughput and latency over the windows that start after warm-up (latency: median of the
    windows' p50, worst of their p99 and max)."""
    starts = [0.0] + [w["minute"] for w in windows[:-1]]
    after = [w for start, w in zip(starts, windows) if start >= warmup_minutes]
    latency = [w["latency_ms"] for w in after]
    return {
        "windows": len(after),
        "sent_per_s": float(np.mean([w["sent_per_s"] for w in after])),
        "answered_per_s": float(np.mean([w["answered_per_s"] for w in after])),
        "latency_ms": {
            "p50_median": float(np.nanmedian([x["p50"] for x in latency])),
            "p99_worst": float(np.nanmax([x["p99"] for x in latency])),
            "max": float(np.nanmax([x["max"] for x in latency])),
        },
        "overdue_at_end": windows[-1]["overdue"],
    }


def summarize(minutes: Sequence[float], rss_mb: Sequence[float], users: Sequence[float], warmup_minutes: float, max_slope_mb_per_min: float,
              memtables_mb_per_min: float = 0.0) -> dict:
    """Whether the RSS samples (at `minutes`) stay flat after warm-up: the least-squares slope from the
    last sample at or before the end of warm-up to the end, against max_slope_mb_per_min; and what
    explains a growth: the RocksDB memtables (their measured growth, taken as steady), then the users
    seen so far (`users`, when they grew by 1% or more)."""
    start = max((i for i, m in enumerate(minutes) if m <= warmup_minutes), default=0)
    t, rss, seen = (np.asarray(x[start:], dtype=float) for x in (minutes, rss_mb, users))
    slope, intercept = np.polyfit(t, rss, 1) if len(t) >= 2 else (float("nan"), float("nan"))
    beyond = slope - memtables_mb_per_min
    new_users = float(seen[-1] - seen[0])
    joint = _joint_fit(t, rss - memtables_mb_per_min * t, seen) if new_users >= 0.01 * seen[-1] else None
    summary = {
        "warmup_minutes": warmup_minutes,
        "fit_from_minute": float(t[0]),
        "rss_mb_at_warmup_end": float(rss[0]),
        "rss_mb_at_end": float(rss[-1]),
        "rss_mb_max": float(rss.max()),
        "slope_mb_per_min": float(slope),
        "fit_mb": [float(intercept + slope * t[0]), float(intercept + slope * t[-1])],
        "threshold_mb_per_min": max_slope_mb_per_min,
        "flat": bool(slope <= max_slope_mb_per_min),
        "memtables_mb_per_min": memtables_mb_per_min,
        "slope_beyond_memtables_mb_per_min": float(beyond),
        "users_seen_at_warmup_end": int(seen[0]),
        "users_seen_at_end": int(seen[-1]),
        "growth_bytes_per_new_user": beyond * float(t[-1] - t[0]) * 2**20 / new_users if new_users > 0 else None,
        "bytes_per_new_user": None if joint is None else joint[2] * 2**20,
        "bytes_per_new_user_se": None if joint is None else joint[3] * 2**20,
        "slope_beyond_users_mb_per_min": None if joint is None else joint[0],
        "slope_beyond_users_se": None if joint is None else joint[1],
    }
    summary["verdict"] = _verdict(summary, new_users)
    return summary


def _joint_fit(t: np.ndarray, rss: np.ndarray, seen: np.ndarray, min_samples: int = 10) -> tuple[float, float, float, float] | None:
    """(MB per minute, MB per user) of rss ~ a + b t + c seen, each followed by its standard error;
    None with fewer than min_samples, or when seen is (nearly) a straight line in t so that the two
    cannot be told apart (R^2 of seen against t above 0.999), or when the fit gives users a negative
    size (time and users too collinear to separate)."""
    if len(t) < min_samples:
        return None
    line = np.column_stack([np.ones_like(t), t])
    residual = seen - line @ np.linalg.lstsq(line, seen, rcond=None)[0]
    if residual @ residual <= 0.001 * np.sum((seen - seen.mean()) ** 2):
        return None
    design = np.column_stack([line, seen])
    coef, *_ = np.linalg.lstsq(design, rss, rcond=None)
    noise = np.sum((rss - design @ coef) ** 2) / (len(t) - 3)
    se = np.sqrt(noise * np.diag(np.linalg.inv(design.T @ design)))
    if coef[2] < 0:
        return None
    return float(coef[1]), float(se[1]), float(coef[2]), float(se[2])


def _verdict(s: dict, new_users: float) -> str:
    """One line: flat, or what the growth after warm-up is explained by."""
    threshold = s["threshold_mb_per_min"]
    head = f"{s['slope_mb_per_min']:.2f} MB/min after warm-up (threshold {threshold:g})"
    if s["flat"]:
        return f"flat: {head}"
    if s["memtables_mb_per_min"]:
        head += f", RocksDB memtables {s['memtables_mb_per_min']:.2f} of it (bounded: each flushes at MMREC_ROCKSDB_WRITE_BUFFER_MB)"
        if s["slope_beyond_memtables_mb_per_min"] <= threshold:
            return f"grows with the RocksDB memtables: {head}; {s['slope_beyond_memtables_mb_per_min']:.2f} MB/min beyond them, flat otherwise"
    if new_users < 0.01 * s["users_seen_at_end"]:
        return f"grows: {head}, with (almost) no new users (a leak, or caches still filling)"
    if s["slope_beyond_users_mb_per_min"] is None:
        return (f"grows: {head}, while {new_users:,.0f} new users arrived; this run cannot tell their state from a leak (too short, "
                f"or users arrived at a steady pace); {s['growth_bytes_per_new_user']:,.0f} B per new user if it is all theirs")
    beyond = f"{s['slope_beyond_users_mb_per_min']:.2f} MB/min beyond the new users' {s['bytes_per_new_user']:,.0f} B each"
    if s["slope_beyond_users_mb_per_min"] <= threshold:
        return f"grows with the users seen: {head}; {beyond}, flat otherwise"
    return f"grows: {head}; {beyond}: more than they explain (a leak, or caches still filling)"


def plot(windows: list[dict], summary: dict, path: Path) -> None:
    """Three panels against minutes: throughput, latency p50/p99, worker RSS (with its fit, the users
    seen and the verdict); the warm-up shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [w["minute"] for w in windows]
    fig, (rate, latency, memory) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for key, label in (("sent_per_s", "sent"), ("answered_per_s", "answered")):
        rate.plot(t, [w[key] for w in windows], label=label)
    rate.set_ylim(0, 1.2 * max(w["sent_per_s"] for w in windows))
    rate.set_ylabel("interactions / s")
    for q in ("p50", "p99"):
        latency.plot(t, [w["latency_ms"][q] for w in windows], label=q)
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    rss = [w["worker_rss_mb"] for w in windows]
    memory.plot(t, rss, label="worker RSS", color="C0")
    memory.plot([summary["fit_from_minute"], t[-1]], summary["fit_mb"], "--", color="C3", label=f"fit: {summary['slope_mb_per_min']:.2f} MB/min")
    memory.set_ylim(0, 1.2 * max(rss))
    memory.set_ylabel("worker RSS (MB)")
    memory.set_xlabel("minutes")
    users = memory.twinx()
    seen = [w["users_seen"] / 1e3 for w in windows]
    users.plot(t, seen, ":", color="C2", label="users seen")
    users.set_ylim(0, 1.2 * max(seen))
    users.set_ylabel("users seen (thousands)")
    memory.set_title(summary["verdict"], fontsize=8, wrap=True)
    for ax in (rate, latency, memory):
        ax.axvspan(0, summary["warmup_minutes"], color="0.9", label="warm-up" if ax is rate else None)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    users.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
