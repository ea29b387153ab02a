"""Rankers compared across several data sets: the `mmrec evaluate --json` results of each, pooled.

Each data set counts once (not by its number of users): a ranker's pooled NDCG@10 is the mean of its
per-data-set values, and a pooled paired difference is the mean of the per-data-set paired
differences, with standard error sqrt(sum of their squared standard errors) / (number of data sets).
A second standard error, from the spread of the per-data-set values, is reported beside it.

Several runs on one data set (e.g. one ranker rerun with other features) are first merged into one
result: their rankers side by side, every pair's difference recomputed over the same users from the
per-user NDCG@10 each run wrote.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.evaluation.report import paired_differences

SECTIONS = ("overall", "cold")


@dataclass(frozen=True)
class Pooled:
    """One quantity over the data sets: the per-data-set (value, standard error) and their pooled mean."""

    per_data: tuple[tuple[float, float], ...]

    @property
    def mean(self) -> float:
        return sum(v for v, _ in self.per_data) / len(self.per_data)

    @property
    def se(self) -> float:
        return math.sqrt(sum(s * s for _, s in self.per_data)) / len(self.per_data)

    @property
    def spread_se(self) -> float:
        """Standard error from the spread of the per-data-set values (sd / sqrt(count)): it also holds
        what varies between data sets and training runs, which the users' standard errors do not."""
        n = len(self.per_data)
        if n < 2:
            return math.nan
        return math.sqrt(sum((v - self.mean) ** 2 for v, _ in self.per_data) / (n - 1) / n)

    @property
    def z(self) -> float:
        """The mean in standard errors (inf when the standard error is 0 and the mean is not)."""
        if self.se > 0:
            return self.mean / self.se
        return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)


@dataclass(frozen=True)
class Comparison:
    """Rankers present in every result, their NDCG@10 per data set and pooled, and paired differences."""

    names: tuple[str, ...]  # data sets, in the order given
    rankers: tuple[str, ...]
    ndcg: dict[str, dict[str, Pooled]]  # section -> ranker -> NDCG@10 (its standard error over users)
    paired: dict[str, dict[str, dict[str, Pooled]]]  # section -> a -> b -> NDCG@10 of a minus b


def _ndcg(doc: dict[str, Any], section: str, ranker: str) -> tuple[float, float]:
    """(NDCG@10, its s.e. over users) of one ranker in one result."""
    summary = doc["rankers"][ranker]["test"][section]["summary"]
    return float(summary["ndcg@10"]), float(summary.get("ndcg@10_se", math.nan))


def _difference(doc: dict[str, Any], section: str, a: str, b: str) -> tuple[float, float]:
    """(mean, s.e.) of a minus b in one result; NaN where the section had no users (no cold-start item)."""
    mean, se = doc["paired_ndcg@10"][section].get(a, {}).get(b, (math.nan, math.nan))
    return float(mean), float(se)


def merge(documents: list[dict[str, Any]], stems: list[str]) -> dict[str, Any]:
    """One result from several `mmrec evaluate --json` runs on the same data set and split.

    A ranker name an earlier run already holds is kept as "name@stem" (stem: that run's file name).
    Raises ValueError when the runs differ in data, split or counts, or one lacks per-user values.
    """
    first = documents[0]
    merged: dict[str, Any] = {**first, "rankers": {}}
    for doc, stem in zip(documents, stems):
        if any(doc.get(key) != first.get(key) for key in ("data", "split", "counts")):
            raise ValueError(f"{stem} is not a run on the same data set and split as {stems[0]}")
        for name, entry in doc["rankers"].items():
            if "ndcg@10_per_user" not in entry["test"]["overall"]:
                raise ValueError(f"{stem} holds no per-user values (written by an older mmrec evaluate); run it again to merge it")
            merged["rankers"][f"{name}@{stem}" if name in merged["rankers"] else name] = entry
    merged["paired_ndcg@10"] = {}
    for section in SECTIONS:
        merged["paired_ndcg@10"][section] = paired_differences(
            {name: np.asarray(entry["test"][section]["ndcg@10_per_user"], dtype=np.float64) for name, entry in merged["rankers"].items()})
    return merged


def compare(results: list[dict[str, Any]], names: list[str]) -> Comparison:
    """Pool `mmrec evaluate --json` documents (one per data set) over the rankers they all hold."""
    if not results:
        raise ValueError("no results to compare")
    common = [r for r in results[0]["rankers"] if all(r in doc["rankers"] for doc in results)]
    if not common:
        raise ValueError("the results have no ranker in common")
    ndcg: dict[str, dict[str, Pooled]] = {}
    paired: dict[str, dict[str, dict[str, Pooled]]] = {}
    for section in SECTIONS:
        ndcg[section] = {r: Pooled(tuple(_ndcg(doc, section, r) for doc in results)) for r in common}
        paired[section] = {
            a: {b: Pooled(tuple(_difference(doc, section, a, b) for doc in results)) for b in common if b != a}
            for a in common
        }
    return Comparison(tuple(names), tuple(common), ndcg, paired)


def format_comparison(comparison: Comparison) -> str:
    """NDCG@10 per data set and pooled, then each pair's difference (earlier ranker minus later) with its z."""
    width = max(20, *(len(r) + 2 for r in comparison.rankers))
    cell = max(9, *(len(n) + 1 for n in comparison.names))
    lines: list[str] = []
    for section in SECTIONS:
        title = "overall" if section == "overall" else "cold-start items"
        lines.append(f"test NDCG@10, {title}, per data set and pooled ({len(comparison.names)} data sets, each counted once):")
        lines.append("ranker".ljust(width) + "".join(n.rjust(cell) for n in comparison.names) + "pooled +- s.e.".rjust(20))
        for r in comparison.rankers:
            pooled = comparison.ndcg[section][r]
            values = "".join(f"{v:.4f}".rjust(cell) for v, _ in pooled.per_data)
            lines.append(r.ljust(width) + values + f"{pooled.mean:.4f} +- {pooled.se:.4f}".rjust(20))
        lines.append("")
        lines.append(f"paired NDCG@10 differences, {title} (per data set, then pooled +- s.e. and z):")
        for i, a in enumerate(comparison.rankers):
            for b in comparison.rankers[i + 1:]:
                pooled = comparison.paired[section][a][b]
                per = " ".join(f"{v:+.4f}" for v, _ in pooled.per_data)
                lines.append(f"  {a} - {b}".ljust(2 * width) + f"{per}   pooled {pooled.mean:+.4f} +- {pooled.se:.4f}  z {pooled.z:+.1f}"
                             f"  (s.e. from the spread {pooled.spread_se:.4f})")
        lines.append("")
    return "\n".join(lines).rstrip()


def to_json(comparison: Comparison) -> dict[str, Any]:
    def entry(p: Pooled) -> dict[str, Any]:
        return {"per_data": [list(v) for v in p.per_data], "mean": p.mean, "se": p.se, "z": p.z, "spread_se": p.spread_se}

    return {
        "data": list(comparison.names),
        "rankers": list(comparison.rankers),
        "pooling": "each data set counted once; se = sqrt(sum of squared s.e.) / data sets; spread_se = sd of the per-data-set values / sqrt(data sets)",
        "ndcg@10": {s: {r: entry(p) for r, p in comparison.ndcg[s].items()} for s in SECTIONS},
        "paired_ndcg@10": {s: {a: {b: entry(p) for b, p in row.items()} for a, row in comparison.paired[s].items()} for s in SECTIONS},
    }


def plot(comparison: Comparison, reference: str, path: Path, others: list[str] | None = None) -> None:
    """`reference` minus each of `others` (default: every other ranker): each data set's difference
    and the pooled one, +- 2 s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = others or [r for r in comparison.rankers if r != reference]
    fig, axes = plt.subplots(1, len(SECTIONS), figsize=(11, 1.2 + 0.9 * len(others)), squeeze=False)
    labels = [*comparison.names, "pooled"]
    for ax, section in zip(axes[0], SECTIONS):
        for row, other in enumerate(others):
            pooled = comparison.paired[section][reference][other]
            points = [*pooled.per_data, (pooled.mean, pooled.se)]
            for j, (value, se) in enumerate(points):
                y = row + (j - len(points) / 2) * 0.6 / len(points)
                pooled_point = j == len(points) - 1
                ax.errorbar(value, y, xerr=2 * se, fmt="D" if pooled_point else "o", color="black" if pooled_point else f"C{j}",
                            markersize=6 if pooled_point else 4, capsize=2, label=labels[j] if row == 0 else None)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(range(len(others)), [f"minus {o}" for o in others])
        ax.invert_yaxis()
        ax.set_title("overall" if section == "overall" else "cold-start items")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"test NDCG@10 of {reference} minus each other ranker, paired over users: per data set and pooled "
                 f"({len(comparison.names)} data sets), bars +- 2 s.e.", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
