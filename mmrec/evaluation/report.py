"""An Evaluation as a text table, a JSON document and a PNG of the Recall@K and NDCG@K curves."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mmrec.evaluation.metrics import UserRankings
from mmrec.evaluation.runner import Evaluation

COLUMNS = (("recall@10", "R@10"), ("recall@20", "R@20"), ("ndcg@10", "N@10"), ("ndcg@20", "N@20"), ("auc", "AUC"))


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _cells(rankings: UserRankings) -> list[str]:
    summary = rankings.summary()
    return [" " * 5 + "-" if math.isnan(summary[key]) else f"{summary[key]:6.4f}" for key, _ in COLUMNS]


def format_table(evaluation: Evaluation) -> str:
    """Header with the split, then one row per ranker: overall | cold-start (| prequential)."""
    c = evaluation.counts
    lines = [
        f"{evaluation.data_name}: {c['users']} users, {c['items']} items, {c['events']} events",
        f"split: validation from {_when(evaluation.split.validation_start)}, test from {_when(evaluation.split.test_start)} "
        f"(train {c['train_events']}, validation {c['validation_events']}, test {c['test_events']} events)",
        f"test: {c['test_users']} users with a relevant item; {c['cold_items']} cold-start items; full ranking, no sampled negatives",
        "",
    ]
    sections = [("overall", lambda r: r.test.overall), ("cold-start", lambda r: r.test.cold)]
    if any(r.prequential is not None for r in evaluation.results):
        sections += [
            ("prequential", lambda r: r.prequential.overall if r.prequential else None),
            ("prequential cold", lambda r: r.prequential.cold if r.prequential else None),
        ]
    heads = " ".join(h.rjust(6) for _, h in COLUMNS)
    width = len(heads)
    name_width = max([20] + [len(r.name) + 2 for r in evaluation.results])
    lines.append(" " * name_width + " | ".join(title.center(width) for title, _ in sections))
    lines.append("ranker".ljust(name_width) + " | ".join(heads for _ in sections))
    for result in evaluation.results:
        cells = []
        for _, get in sections:
            rankings = get(result)
            cells.append(" ".join(_cells(rankings)) if rankings is not None else "-".center(width))
        users = f"  (users {len(result.test.overall)} / {len(result.test.cold)})"
        lines.append(result.name.ljust(name_width) + " | ".join(cells) + users)
    return "\n".join(lines)


def paired_differences(per_user: dict[str, np.ndarray]) -> dict[str, dict[str, tuple[float, float]]]:
    """Every ranker's per-user metric minus every other's over the same users: {a: {b: (mean, s.e.)}}.

    per_user: ranker -> (U,) values, the same U users in the same order for every ranker; a section
    without users (U = 0: no cold-start item) gives no pairs.
    """
    per_user = {name: values for name, values in per_user.items() if values.size}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for a, va in per_user.items():
        out[a] = {}
        for b, vb in per_user.items():
            diff = va - vb
            se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else float("nan")
            out[a][b] = (float(diff.mean()), se)
    return out


def paired(evaluation: Evaluation, section: str, k: int = 10) -> dict[str, dict[str, tuple[float, float]]]:
    """NDCG@k of ranker a minus ranker b over the same users: {a: {b: (mean, s.e.)}}.

    Every ranker is ranked for the same users in the same order (the task depends on the data only),
    so the per-user differences pair up; section: "overall" or "cold".
    """
    return paired_differences({r.name: getattr(r.test, section).ndcg(k) for r in evaluation.results})


def format_paired(evaluation: Evaluation, section: str) -> str:
    """The paired NDCG@10 differences as a matrix, row minus column."""
    table = paired(evaluation, section)
    names = list(table)
    width = max(15, *(len(n) for n in names))
    lines = [f"NDCG@10 {section}, row minus column (paired over users, +- standard error):",
             " " * width + "".join(n.rjust(width + 1) for n in names)]
    for a in names:
        cells = ["-".rjust(width + 1) if a == b else f"{table[a][b][0]:+.4f}+-{table[a][b][1]:.4f}".rjust(width + 1) for b in names]
        lines.append(a.ljust(width) + "".join(cells))
    return "\n".join(lines)


def to_json(evaluation: Evaluation) -> dict[str, Any]:
    """Everything: split, counts, per ranker the chosen and tried grid points, summaries, curves."""

    def rankings(r: UserRankings) -> dict[str, Any]:
        return {"summary": r.summary(), "curves": r.curves()}

    def tested(r: UserRankings) -> dict[str, Any]:
        """With each test user's NDCG@10, in the task's user order, so that `mmrec compare` can pair
        rankers of separate runs on the same data and split."""
        return {**rankings(r), "ndcg@10_per_user": [round(float(v), 6) for v in r.ndcg(10)]}

    out: dict[str, Any] = {
        "data": evaluation.data_name,
        "split": {"validation_start": _when(evaluation.split.validation_start), "test_start": _when(evaluation.split.test_start)},
        "counts": evaluation.counts,
        "k_max": evaluation.k_max,
        "features": evaluation.features,
        "selection": "validation ndcg@10 (overall)",
        "rankers": {},
        "paired_ndcg@10": {section: paired(evaluation, section) for section in ("overall", "cold")},
    }
    for result in evaluation.results:
        entry: dict[str, Any] = {
            "description": result.description,
            "params": result.params,
            "tuning": result.tuning,
            "fit_seconds": result.fit_seconds,
            "score_seconds": result.score_seconds,
            "test": {"overall": tested(result.test.overall), "cold": tested(result.test.cold)},
        }
        if result.prequential is not None:
            entry["prequential"] = {
                "online": result.prequential.online,
                "events": result.prequential.events,
                "seconds": result.prequential_seconds,
                "overall": rankings(result.prequential.overall),
                "cold": rankings(result.prequential.cold),
            }
        out["rankers"][result.name] = entry
    return out


def write_json(evaluation: Evaluation, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(evaluation), indent=2, allow_nan=True) + "\n")


def plot(evaluation: Evaluation, path: Path) -> None:
    """Recall@K and NDCG@K, K = 1..k_max, one line per ranker; a row per section (overall, cold, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [("overall", lambda r: r.test.overall), ("cold-start", lambda r: r.test.cold)]
    if any(r.prequential is not None for r in evaluation.results):
        sections.append(("prequential", lambda r: r.prequential.overall if r.prequential else None))
    fig, axes = plt.subplots(len(sections), 2, figsize=(11, 3.6 * len(sections)), squeeze=False)
    ks = list(range(1, evaluation.k_max + 1))
    for row, (title, get) in enumerate(sections):
        for col, metric in enumerate(("recall", "ndcg")):
            ax = axes[row][col]
            for result in evaluation.results:
                rankings = get(result)
                if rankings is not None and len(rankings):
                    ax.plot(ks, rankings.curves()[metric], label=result.name)
            ax.set_title(f"{title}: {'Recall' if metric == 'recall' else 'NDCG'}@K")
            ax.set_xlabel("K")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{evaluation.data_name}: full ranking, test period")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
