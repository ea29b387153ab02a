"""What every benchmark shares: the machine's description, its measured matmul peak, timing,
percentiles and the one JSON object a run prints."""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def machine() -> dict[str, Any]:
    """The machine a run measured on (load: the 1-minute load average at the start of the run)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_1m": load_average(),
    }


def gemm_peak(seconds: float = 1.5, n: int = 2048) -> dict[str, float]:
    """This machine's dense fp32 matmul rate now, with the current torch thread count: the best of
    repeated n x n torch.mm calls (FLOP/s). Measured in the same run as the figure it normalises."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return {"peak_flops": max(rates), "median_flops": statistics.median(rates), "gemm_n": n}


def time_calls(fn: Callable[[], object], min_seconds: float = 0.5, min_calls: int = 3) -> list[float]:
    """Seconds of each call of fn, repeated for at least min_seconds and min_calls (one warm-up call first)."""
    fn()
    times = []
    deadline = time.perf_counter() + min_seconds
    while time.perf_counter() < deadline or len(times) < min_calls:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of repeated measurements of one figure."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def peak_rss_bytes() -> int:
    """This process's peak resident set so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes(pid: int | None = None) -> int:
    """Current resident set of a process (this one by default)."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def emit(name: str, config: dict[str, Any], figures: dict[str, Any], notes: Sequence[str] = (), as_json: bool = True) -> dict[str, Any]:
    """One run's result: printed as one JSON object (as_json) or as readable lines."""
    result = {"bench": name, "config": config, "machine": machine(), "figures": figures, "notes": list(notes)}
    if as_json:
        print(json.dumps(result, default=_plain), flush=True)
    else:
        print(f"== {name} ==")
        for section in ("config", "machine", "figures"):
            for key, value in result[section].items():
                print(f"  {key}: {_readable(value)}")
        for note in notes:
            print(f"  note: {note}")
    return result


def _plain(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value)}")


def _readable(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_readable(v)}" for k, v in value.items())
    return str(value)
