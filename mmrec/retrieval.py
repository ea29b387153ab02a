"""The retrieval stage: a per-user shortlist from a linear surrogate of the score, re-ranked exactly.

Exact scoring costs ~66k FLOPs per (user, item) pair; a refresh over a large catalogue scores a
surrogate for every item instead and the patent score (model.pair_scores) only for the best S.

The surrogate replaces the user's interest kernel K_j by its sum times a box filter (K_j is a box at
the prior and stays near one) and claim 8's attention by uniform weights. With G_jc = box_m (*) F_jc
(each channel smoothed alone, zero padding) and w_jc = (sum K_j) c_jc, the spanning readout's
first feature matrix is ~ sum_c w_jc G_jc, and its mean max-pooled value is at most
    sum_c [ w_jc^+ Mmax_jc(x) + w_jc^- Mmin_jc(x) ],
where Mmax / Mmin are the means over pooling windows of each window's max / min of G_jc (the max of
a sum is at most the sum of the maxes). So, linear in per-item vectors psi(x):
    s~(u, x) = b_x + sum_j [ v_j . mean F_j(x) + r_j sum_c (w_jc^+ Mmax_jc(x) + w_jc^- Mmin_jc(x)) ]
    psi(x) = [mean F_j, Mmax_j, Mmin_j]_j               (N, 3, d) -> D = 3 N d = 72 at the defaults
    phi(u) = [v_j, r_j w_j^+, r_j w_j^-]_j
Under the per_channel readout (a max over channels) the item terms are the window max / min of
max_c G_jc / min_c G_jc, one number each per layer, weighted by r_j (sum K_j)^+ and r_j (sum K_j)^-.
Biases that do not depend on the item (global, user) do not change a ranking and are left out. The
hybrid extension's collaborative term p . q_x is linear already and is added exactly.
docs/design.md ("Retrieval") has the measured recall against exact top-K.

The shortlist is chosen in rounds (Retriever.rank): the first re-scores the surrogate's best few
exactly; each later round fits the exact scores so far as the surrogate plus a linear function of
psi (least squares, per user) and re-scores the candidates that fit ranks best among the
surrogate's best candidate_factor x S. The fit learns what the bound gets wrong for this user
(the kernel's shape, the attention), so the same number of exact pairs holds more of the top-K.

A catalogue of projection_min_items or more is scanned through a projection of psi onto its
leading principal directions (r < D floats read per item, r chosen to keep projection_energy of
psi's spread); the candidates' full surrogate is then computed from psi itself.

Larger catalogues also get an inverted-file index over psi (k-means lists): a user's shortlist then
comes from the lists whose centroids score best under phi(u), so a refresh reads a few percent of
the item vectors instead of all of them. Items added after the lists were built are scanned in
full until the next rebuild.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.model import ModelConfig, ParamLayout, SharedParams, UserParams, pair_scores, visual_item_bias

RetrievalMode = Literal["auto", "exact", "shortlist"]
ScanPrecision = Literal["auto", "float32", "bfloat16"]

_SCAN_CHUNK = 1 << 16  # items per surrogate matrix product when scanning everything
_PAIR_CHUNK = 512  # (user, item) pairs per exact re-scoring call: ~7 MB of float32 maps (measured
# ~2x faster per pair than 2048 at 1 thread: the maps and intermediates stay in cache)
_USER_GROUP = 8  # users whose scan values (users x items float32) are held at once
_RIDGE = 1e-4  # ridge of the refinement fit, relative to the mean diagonal of its normal matrix
_PRECISION_PROBE_ROWS = 1 << 20  # rows of projected coordinates timed in each precision (scan_precision auto)
_PRECISION_PROBES = 9  # interleaved timings of each precision per round (the round's median ratio counts)
_PRECISION_ROUNDS = 3  # rounds; the best counts: on a shared machine a busy moment can take a core for a round
_BFLOAT16_GAIN = 1.1  # auto scans in bfloat16 only where that is at least this much faster than float32


@dataclass(frozen=True)
class RetrievalConfig:
    """How a refresh ranks the catalogue (mmrec.settings.RetrievalSettings documents each field)."""

    mode: RetrievalMode = "auto"
    min_items: int = 5_000  # auto: a shortlist from this many items on, exact scoring below
    shortlist_factor: int = 8  # S = shortlist_factor * k items re-scored exactly per user ...
    shortlist_min: int = 100  # ... but at least this many
    partition_min_items: int = 5_000_000  # an inverted-file index from this many items on
    partition_probe: float = 0.03  # fraction of the lists a query reads
    refine_rounds: int = 2  # exact re-scoring rounds that choose a shortlist (1: the surrogate's best S)
    candidate_factor: int = 10  # later rounds choose among the surrogate's best candidate_factor x S
    projection_min_items: int = 200_000  # scan a principal-direction projection of psi from this many items on
    projection_energy: float = 0.99  # share of psi's spread about its mean the projection keeps
    scan_precision: ScanPrecision = "auto"  # of the projected coordinates; auto: the faster here (timed when built)
    seed: int = 0  # k-means initialisation

    def shortlist_size(self, k: int) -> int:
        return max(self.shortlist_min, self.shortlist_factor * k)

    def uses_shortlist(self, items: int) -> bool:
        return self.mode == "shortlist" or (self.mode == "auto" and items >= self.min_items)


class ItemSource(Protocol):
    """What the retrieval stage reads of a catalogue (mmrec.catalogue.Catalogue, or a memory-mapped
    store of the same shape for catalogues larger than memory)."""

    @property
    def revision(self) -> int: ...

    @property
    def item_bias(self) -> Tensor: ...

    @property
    def item_factors(self) -> Tensor: ...

    def rows_changed_since(self, revision: int) -> Tensor: ...

    def float_maps(self, index: slice | Tensor | None = None) -> list[Tensor]: ...

    def __len__(self) -> int: ...


def item_vectors(maps: Sequence[Tensor], cfg: ModelConfig) -> Tensor:
    """psi: the surrogate's per-item vectors (I, D) from maps [(I, d, H_j, W_j)] * N."""
    m, p = cfg.kernel_size, cfg.pool
    parts = []
    for layer in maps:
        i_count, d, h, w = layer.shape
        box = layer.new_full((d, 1, m, m), 1.0 / (m * m))
        smooth = F.conv2d(layer, box, padding=m // 2, groups=d)  # G (I, d, H, W)
        if cfg.readout == "per_channel":
            top, bottom = smooth.amax(dim=1, keepdim=True), smooth.amin(dim=1, keepdim=True)
        else:
            top, bottom = smooth, smooth
        ceil = bool(h % p or w % p)
        high = F.max_pool2d(top, p, p, ceil_mode=ceil).mean(dim=(2, 3))
        low = -F.max_pool2d(-bottom, p, p, ceil_mode=ceil).mean(dim=(2, 3))
        parts += [layer.mean(dim=(2, 3)), high, low]
    return torch.cat(parts, dim=1)


def user_vectors(params: UserParams, shared: SharedParams, cfg: ModelConfig) -> Tensor:
    """phi: the surrogate's per-user vectors (U, D), in psi's layout."""
    parts = []
    for j in range(cfg.n_layers):
        gain = params.interest[:, j].sum(dim=(1, 2))  # sum K_j (U,)
        if cfg.readout == "per_channel":
            weight = (params.fusion[:, j] * gain)[:, None]  # (U, 1)
            up, down = weight * (gain[:, None] >= 0), weight * (gain[:, None] < 0)
        else:
            w = gain[:, None] * params.channel[:, j]  # (U, d)
            r = params.fusion[:, j : j + 1]
            up, down = r * w.clamp(min=0), r * w.clamp(max=0)
        parts += [shared.visual_bias[j].expand(params.flat.shape[0], -1), up, down]
    return torch.cat(parts, dim=1)


class _Partitions:
    """An inverted file over item vectors: k-means centroids and the rows of each list, in list order."""

    def __init__(self, vectors: Tensor, rows: Tensor, seed: int) -> None:
        n = vectors.shape[0]
        lists = max(1, int(2 * math.sqrt(n)))
        gen = torch.Generator().manual_seed(seed)
        sample = vectors[torch.randperm(n, generator=gen)[: min(n, 64 * lists)]]
        centroids = sample[torch.randperm(sample.shape[0], generator=gen)[:lists]].clone()
        for _ in range(8):  # Lloyd on a sample; empty lists keep their centroid
            assign = _nearest(sample, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
            counts = torch.bincount(assign, minlength=lists).to(sample.dtype)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled, None]
        assign = torch.cat([_nearest(vectors[s : s + _SCAN_CHUNK], centroids) for s in range(0, n, _SCAN_CHUNK)])
        order = torch.argsort(assign, stable=True)
        counts = torch.bincount(assign, minlength=lists)
        self.centroids = centroids  # (L, D)
        self.starts = torch.cumsum(counts, 0) - counts  # (L,)
        self.counts = counts
        self.rows = rows[order]  # catalogue rows, list after list
        self.vectors = vectors[order].contiguous()  # psi in the same order

    @property
    def size(self) -> int:
        return self.rows.shape[0]

    def candidates(self, phi: Tensor, probe: float) -> tuple[Tensor, Tensor]:
        """The rows and vectors of the lists whose centroids score best under phi (D,)."""
        lists = max(1, math.ceil(probe * self.centroids.shape[0]))
        best = torch.topk(self.centroids @ phi, lists).indices
        starts, counts = self.starts[best], self.counts[best]
        total = int(counts.sum())
        # positions of every probed list's members, without a Python loop over lists
        offsets = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
        positions = torch.arange(total) + offsets
        return self.rows[positions], self.vectors[positions]


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (Euclidean) of each row of x."""
    return (centroids.square().sum(dim=1)[None, :] - 2 * x @ centroids.T).argmin(dim=1)


class _Projection:
    """psi's leading principal directions and every item's coordinates along them, so a scan reads
    r < D floats per item: phi . psi = phi . mean + (basis^T phi) . coords + what the projection drops."""

    def __init__(self, vectors: Tensor, energy: float, precision: ScanPrecision) -> None:
        n, dim = vectors.shape
        gram, total = torch.zeros(dim, dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
        for start in range(0, n, _SCAN_CHUNK):  # in chunks: a float64 copy of every vector would be 8 D bytes per item
            part = vectors[start : start + _SCAN_CHUNK].double()
            gram += part.T @ part
            total += part.sum(dim=0)
        mean = total / n
        spread, directions = torch.linalg.eigh(gram / n - torch.outer(mean, mean))  # ascending
        share = spread.flip(0).clamp(min=0).cumsum(0) / spread.clamp(min=0).sum().clamp(min=1e-30)
        rank = min(int((share < energy).sum()) + 1, dim)
        self.mean = mean.float()  # (D,)
        self.basis = directions.flip(1)[:, :rank].float().contiguous()  # (D, r)
        self.built_rows = n
        coords = torch.cat([self.project(vectors[s : s + _SCAN_CHUNK]) for s in range(0, n, _SCAN_CHUNK)])  # (n, r)
        self.coords = coords.to(_scan_dtype(coords, precision))

    def project(self, vectors: Tensor) -> Tensor:
        """(R, D) -> (R, r)."""
        return (vectors - self.mean) @ self.basis

    def update(self, vectors: Tensor, rows: Tensor, n: int) -> None:
        """Coordinates of changed rows (R,) long, whose psi are vectors (R, D); n rows in all."""
        if self.coords.shape[0] < n:
            self.coords = _grown(self.coords, max(n, 2 * self.coords.shape[0]))
        self.coords[rows] = self.project(vectors).to(self.coords.dtype)


def _grown(tensor: Tensor, rows: int) -> Tensor:
    """tensor (R, ...) extended with zero rows to (rows, ...), same dtype."""
    out = tensor.new_zeros(rows, *tensor.shape[1:])
    out[: tensor.shape[0]] = tensor
    return out


def _scan_dtype(coords: Tensor, precision: ScanPrecision) -> torch.dtype:
    """The dtype the coordinates (n, r) are kept and scanned in. A scan is bound by the bytes it reads,
    so bfloat16 halves it where the CPU has native bfloat16 dot products; elsewhere torch widens each
    value first and it is slower (measured at 1M items, 2 threads, on an EPYC with AVX512-BF16: a
    refresh 0.87x the time; with oneDNN limited to AVX2 the scan alone 2.5x slower; at 1 thread no
    gain). auto times both on these coordinates, at the current thread count, interleaved so that a
    busy moment of a shared machine weighs on both, in three rounds, and keeps bfloat16 if it wins
    clearly in one (measured at 2 threads: one round in six saw ~1.0, the bfloat16 scan at its
    one-thread speed; the others 1.5-1.6)."""
    if precision != "auto":
        return getattr(torch, precision)
    wide = coords[:_PRECISION_PROBE_ROWS]
    narrow = wide.bfloat16()
    weights = torch.ones(coords.shape[1])

    def seconds(table: Tensor) -> float:
        start = time.perf_counter()
        torch.mv(table, weights.to(table.dtype))
        return time.perf_counter() - start

    def median_ratio() -> float:  # float32 time over bfloat16 time
        seconds(wide), seconds(narrow)  # warm-up
        ratios = sorted(seconds(wide) / seconds(narrow) for _ in range(_PRECISION_PROBES))
        return ratios[len(ratios) // 2]

    best = max(median_ratio() for _ in range(_PRECISION_ROUNDS))
    return torch.bfloat16 if best >= _BFLOAT16_GAIN else torch.float32


def _scan(table: Tensor, weights: Tensor, bias: Tensor, count: int) -> Tensor:
    """Each user's `count` best rows of table (n, r) under weights (U, r) plus bias (n,): (U, C) long, unsorted.

    A bfloat16 table is multiplied in bfloat16 (values rounded to 8 significant bits, far finer than
    the candidate pool's margin around the shortlist) and the bias added in float32."""
    out = []
    for start in range(0, weights.shape[0], _USER_GROUP):
        group = weights[start : start + _USER_GROUP].to(table.dtype)
        if group.shape[0] == 1:  # a matrix-vector product reads the table faster than a matrix product
            values = (torch.addmv(bias, table, group[0]) if table.dtype == torch.float32 else torch.mv(table, group[0]).float().add_(bias))[None]
        elif table.dtype == torch.float32:
            values = torch.addmm(bias[:, None], table, group.T).T.contiguous()
        else:
            values = torch.mm(table, group.T).T.float().add_(bias).contiguous()
        out.append(_best(values, count))
    return torch.cat(out)


def _best(values: Tensor, count: int) -> Tensor:
    """Positions of each row's `count` largest values (U, C) long, unsorted. A threshold from a strided
    sample first keeps topk's input near count (topk of 20k from 1M costs ~10 ms, this ~2 ms)."""
    n = values.shape[1]
    step = n // (8 * count)
    if step < 2:
        return torch.topk(values, count, dim=1, sorted=False).indices
    sample = values[:, ::step]
    above = math.ceil(1.25 * count / step)  # expected to leave ~1.25 count at or above it
    threshold = torch.topk(sample, above, dim=1).values[:, -1:]
    out = []
    for row, limit in zip(values, threshold):
        keep = torch.from_numpy(np.flatnonzero(row.numpy() >= limit.item()))  # ~4x faster than torch.nonzero here
        if keep.numel() < count:  # an unlucky sample: rank the whole row
            out.append(torch.topk(row, count, sorted=False).indices)
        else:
            out.append(keep[torch.topk(row[keep], count, sorted=False).indices])
    return torch.stack(out)


def _normal_equations(features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Least squares with an intercept, per user: features (U, R, D), targets (U, R) -> X^T X (U, D + 1, D + 1)
    and X^T y (U, D + 1) in float64, X = [features, 1]. Sums over rows, so rounds add theirs up."""
    x = torch.cat([features, features.new_ones(*features.shape[:2], 1)], dim=2).double()
    return x.transpose(1, 2) @ x, (x.transpose(1, 2) @ targets.double()[..., None])[..., 0]


def _solve(normal: Tensor, moment: Tensor) -> Tensor:
    """Ridge solution of _normal_equations' sums, without the intercept: weights (U, D) float32."""
    ridge = _RIDGE * normal.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=1e-30)
    eye = torch.eye(normal.shape[1], dtype=normal.dtype)
    return torch.linalg.solve(normal + ridge[:, None, None] * eye, moment)[:, :-1].float()


class Retriever:
    """Keeps the surrogate's item vectors in step with a catalogue and shortlists items for users."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams, config: RetrievalConfig | None = None) -> None:
        self.cfg = cfg
        self.shared = shared
        self.config = config or RetrievalConfig()
        self.layout = ParamLayout(cfg)
        self._vectors = torch.zeros(0, self._dim())
        self._visual = torch.zeros(0)  # (rows,) each item's visual_item_bias, for the exact re-scoring
        self._rows = 0  # catalogue rows the vectors cover (a reader on another thread may see more)
        self._revision = -1  # catalogue revision the vectors reflect
        self._source: int | None = None  # id() of the catalogue they were computed from
        self._partitions: _Partitions | None = None
        self._stale = torch.zeros(0, dtype=torch.bool)  # rows changed since the partitions were built
        self._projection: _Projection | None = None

    # -- the item side ----------------------------------------------------------------------------

    def sync(self, catalogue: ItemSource) -> None:
        """Computes the vectors of rows added or replaced since the last call."""
        if self._source != id(catalogue):
            self._source, self._revision, self._rows, self._partitions, self._projection = id(catalogue), -1, 0, None, None
            self._vectors = torch.zeros(0, self._dim())
            self._visual = torch.zeros(0)
            self._stale = torch.zeros(0, dtype=torch.bool)
        revision = catalogue.revision  # read first: rows published after this are caught next time
        if revision == self._revision:
            return
        changed = torch.arange(len(catalogue)) if self._revision < 0 else catalogue.rows_changed_since(self._revision)
        n = max(self._rows, int(changed.max()) + 1 if changed.numel() else 0)
        if self._vectors.shape[0] < n:
            capacity = max(n, 2 * self._vectors.shape[0])
            self._vectors, self._visual, self._stale = (_grown(t, capacity) for t in (self._vectors, self._visual, self._stale))
        for start in range(0, changed.numel(), 4096):
            rows = changed[start : start + 4096]
            maps = catalogue.float_maps(rows)
            self._vectors[rows] = item_vectors(maps, self.cfg)
            self._visual[rows] = visual_item_bias(maps, self.shared).float()
        self._stale[changed] = True
        self._maybe_project(n, changed)
        self._revision, self._rows = revision, n
        self._maybe_partition(n)

    def _dim(self) -> int:
        per_layer = 3 * self.cfg.channels if self.cfg.readout == "spanning" else self.cfg.channels + 2
        return self.cfg.n_layers * per_layer

    def _maybe_project(self, n: int, changed: Tensor) -> None:
        """(Re)builds the projection once the catalogue is large enough, and again when it grew by a
        quarter since the last build; rows changed meanwhile are projected on the current basis."""
        if n < self.config.projection_min_items:
            self._projection = None
        elif self._projection is None or n > self._projection.built_rows * 5 // 4:
            self._projection = _Projection(self._vectors[:n], self.config.projection_energy, self.config.scan_precision)
        else:
            self._projection.update(self._vectors.index_select(0, changed), changed, n)

    def _maybe_partition(self, n: int) -> None:
        """(Re)builds the lists once the catalogue is large enough, and again when a quarter of the
        items changed since the last build (those are scanned in full meanwhile)."""
        if n < self.config.partition_min_items:
            self._partitions = None
            return
        stale = int(self._stale[:n].sum())
        if self._partitions is None or stale > n // 4:
            self._partitions = _Partitions(self._vectors[:n], torch.arange(n), self.config.seed)
            self._stale[:n] = False

    @property
    def partitioned(self) -> bool:
        return self._partitions is not None

    @property
    def scan_dtype(self) -> str | None:
        """The projected scan's precision ('float32' or 'bfloat16'), None while the scan reads psi itself."""
        return None if self._projection is None else str(self._projection.coords.dtype).removeprefix("torch.")

    @property
    def nbytes(self) -> int:
        """Bytes held: item vectors, plus the lists' reordered copy when partitioned."""
        total = (self._vectors.numel() + self._visual.numel()) * 4 + self._stale.numel()
        if self._projection is not None:
            total += self._projection.coords.numel() * self._projection.coords.element_size()
        if self._partitions is not None:
            part = self._partitions
            total += (part.vectors.numel() + part.centroids.numel()) * 4 + (part.rows.numel() + 2 * part.counts.numel()) * 8
        return total

    # -- shortlists -------------------------------------------------------------------------------

    @torch.inference_mode()
    def shortlist(self, offsets: Tensor, catalogue: ItemSource, size: int) -> Tensor:
        """The best `size` catalogue rows of each user under the surrogate: (U, S) long, S = min(size, I)."""
        self.sync(catalogue)
        params = self.layout.split(self.shared.prior + offsets)
        size = min(size, self._rows)
        pool = min(self._rows, size * self.config.candidate_factor) if self._projection is not None else size
        rows, values, _ = self._pool(params, catalogue, pool)
        return rows.gather(1, torch.topk(values, size, dim=1, sorted=False).indices)

    @torch.inference_mode()
    def rank(self, offsets: Tensor, catalogue: ItemSource, size: int) -> tuple[Tensor, Tensor]:
        """Each user's shortlist, chosen over refine_rounds rounds of exact scoring, and its exact
        scores: (U, S) long rows, (U, S); S = min(size, I).

        Round 1 re-scores the surrogate's best S / rounds of the candidates; every later round fits the
        exact scores so far as surrogate + psi . w + a (w, a per user, least squares) and re-scores the
        candidates not yet scored that this corrected surrogate ranks best.
        """
        self.sync(catalogue)
        params = self.layout.split(self.shared.prior + offsets)
        size = min(size, self._rows)
        rounds = self._round_sizes(size)
        pool = min(self._rows, size * self.config.candidate_factor)
        if len(rounds) == 1 or pool == size:
            rows = self.shortlist(offsets, catalogue, size)
            return rows, self.rescore(offsets, catalogue, rows)
        rows, values, vectors = self._pool(params, catalogue, pool)  # (U, C), (U, C), (U, C, D)
        guess, taken = values, torch.zeros(rows.shape, dtype=torch.bool)
        picked: list[Tensor] = []
        scores: list[Tensor] = []
        sums: tuple[Tensor, Tensor] | None = None  # the fit's normal equations over the rows scored so far
        for count in rounds:
            if sums is not None:
                guess = values + torch.bmm(vectors, _solve(*sums)[..., None])[..., 0]
            pick = torch.topk(guess.masked_fill(taken, float("-inf")), count, dim=1).indices  # (U, count)
            taken.scatter_(1, pick, True)
            picked.append(pick)
            scores.append(self.rescore(offsets, catalogue, rows.gather(1, pick)))
            if len(picked) < len(rounds):
                features = vectors.gather(1, pick[..., None].expand(-1, -1, vectors.shape[2]))
                new = _normal_equations(features, scores[-1] - values.gather(1, pick))
                sums = new if sums is None else (sums[0] + new[0], sums[1] + new[1])
        return rows.gather(1, torch.cat(picked, dim=1)), torch.cat(scores, dim=1)

    def _round_sizes(self, size: int) -> list[int]:
        """Pairs re-scored per round: refine_rounds rounds, fewer where a round would hold fewer rows
        than the fit has unknowns (D + 1)."""
        rounds = max(1, min(self.config.refine_rounds, size // (self._vectors.shape[1] + 1)))
        return [size // rounds + (1 if r < size % rounds else 0) for r in range(rounds)]

    def _pool(self, params: UserParams, catalogue: ItemSource, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """Each user's `count` best rows under the surrogate, their surrogate values and their psi:
        (U, C) long, (U, C), (U, C, D). Through the projection the rows are the projected surrogate's
        best, the values the full surrogate's. The rows are in no particular order."""
        n = self._rows  # rows whose vectors are known (the catalogue may have grown since on its writer thread)
        phi = user_vectors(params, self.shared, self.cfg)  # (U, D)
        bias = catalogue.item_bias
        if self.cfg.collab_dim:  # the exact collaborative term is added; the lists index psi only, so scan all
            rows, values = _top_rows(phi, self._vectors[:n], bias, torch.arange(n), count, (params.collab, catalogue.item_factors[:n]))
        elif self._partitions is not None:
            rows, values = self._probe(self._partitions, phi, bias, count)
        else:
            if self._projection is None:
                rows = _scan(self._vectors[:n], phi, bias[:n], count)
            else:
                rows = _scan(self._projection.coords[:n], phi @ self._projection.basis, bias[:n], count)
            vectors = self._vectors.index_select(0, rows.flatten()).view(*rows.shape, -1)
            return rows, torch.bmm(vectors, phi[..., None])[..., 0] + bias.index_select(0, rows.flatten()).view(rows.shape), vectors
        return rows, values, self._vectors.index_select(0, rows.flatten()).view(*rows.shape, -1)

    def _probe(self, partitions: _Partitions, phi: Tensor, bias: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """_pool through the inverted file: each user's probed lists, and every row changed since they were built."""
        n = self._rows
        fresh = torch.nonzero(self._stale[:n]).flatten()  # scanned in full
        rows_out, values_out = [], []
        for u in range(phi.shape[0]):
            rows, vectors = partitions.candidates(phi[u], self.config.partition_probe)
            keep = ~self._stale[rows]
            rows = torch.cat([rows[keep], fresh])
            vectors = torch.cat([vectors[keep], self._vectors[fresh]])
            if rows.numel() < count:  # tiny probe on a small index: fall back to everything
                rows, vectors = torch.arange(n), self._vectors[:n]
            user_rows, user_values = _top_rows(phi[u : u + 1], vectors, bias, rows, count)
            rows_out.append(user_rows[0])
            values_out.append(user_values[0])
        return torch.stack(rows_out), torch.stack(values_out)

    @torch.inference_mode()
    def rescore(self, offsets: Tensor, catalogue: ItemSource, rows: Tensor) -> Tensor:
        """Exact scores (U, S) of each user's shortlisted rows (U, S)."""
        self.sync(catalogue)  # the items' visual bias is kept beside their vectors
        users, size = rows.shape
        out = torch.empty(users, size)
        order = rows.argsort(dim=1)  # each user's rows in catalogue order: a memory-mapped catalogue reads them ~2x faster
        flat_rows = rows.gather(1, order).reshape(-1)
        owner = torch.arange(users).repeat_interleave(size)
        params_all = self.shared.prior + offsets
        for start in range(0, users * size, _PAIR_CHUNK):
            stop = min(start + _PAIR_CHUNK, users * size)
            part = flat_rows[start:stop]
            who = owner[start:stop]
            one_user = bool((who == who[0]).all())
            params = self.layout.split(params_all[who[:1]] if one_user else params_all[who])
            scores = pair_scores(
                params,
                catalogue.float_maps(part),
                catalogue.item_bias[part],
                self.shared,
                self.cfg,
                catalogue.item_factors[part],
                self._visual[part],
            )
            out.view(-1)[start:stop] = scores
        return torch.empty_like(out).scatter_(1, order, out)


def _top_rows(
    phi: Tensor, vectors: Tensor, bias: Tensor, rows: Tensor, size: int, collab: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """The `size` rows (of `rows`, whose vectors are `vectors`) with the best surrogate per user and
    their surrogate values: (U, S) long, (U, S).

    collab: the users' factors (U, k) and the rows' item factors (R, k), whose products are added.
    """
    best_values: Tensor | None = None
    best_rows: Tensor | None = None
    for start in range(0, rows.numel(), _SCAN_CHUNK):
        chunk_rows = rows[start : start + _SCAN_CHUNK]
        values = torch.addmm(bias[chunk_rows][None, :], phi, vectors[start : start + _SCAN_CHUNK].T)
        if collab is not None:
            values.addmm_(collab[0], collab[1][start : start + _SCAN_CHUNK].T)
        if best_values is not None:
            values = torch.cat([best_values, values], dim=1)
            chunk_rows = torch.cat([best_rows, chunk_rows.expand(phi.shape[0], -1)], dim=1)
        else:
            chunk_rows = chunk_rows.expand(phi.shape[0], -1)
        top = torch.topk(values, min(size, values.shape[1]), dim=1, sorted=False)
        best_values, best_rows = top.values, chunk_rows.gather(1, top.indices)
    assert best_rows is not None and best_values is not None
    return best_rows, best_values
