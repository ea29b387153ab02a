"""Synthetic catalogues and users for the benchmarks (no CNN, deterministic, any size).

Two kinds of items, both with the default stored shapes (N = 3 layers, d = 8, 14x14, 14x14, 7x7):
- "concepts": what CNN feature maps look like to this model: a per-item channel offset (colour,
  lighting), background noise, and 1-3 "concepts" (object parts) drawn from a vocabulary of 64, each
  a Gaussian blob with its own channel signature at a random place and scale, seen at the same place
  by every layer. A user's taste is a few concepts.
- "noise": every value i.i.d. N(0, 1) (tests/synthetic_items.py): no structure at all, the worst case
  for any index.
Users are trained by the online step itself (OnlineLearner) on events of a simulated taste.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmrec.model import ModelConfig, SharedParams
from mmrec.online import Examples, OnlineConfig, OnlineLearner
from mmrec.user_state import UserState

SHAPES = ((8, 14, 14), (8, 14, 14), (8, 7, 7))
CONCEPTS = 64
_CHUNK = 8192


def _signatures(shapes: Sequence[tuple[int, int, int]], seed: int = 1234) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for d, _, _ in shapes:
        sig = torch.randn(CONCEPTS, d, generator=gen)
        out.append(sig / sig.norm(dim=1, keepdim=True))
    return out


def concept_items(count: int, seed: int, shapes: Sequence[tuple[int, int, int]] = SHAPES) -> tuple[list[Tensor], Tensor]:
    """maps [(count, d, H, W)] float32 and concepts (count, CONCEPTS) bool, seeded."""
    gen = torch.Generator().manual_seed(seed)
    signatures = _signatures(shapes)
    present = torch.randint(1, 4, (count,), generator=gen)
    which = torch.randint(0, CONCEPTS, (count, 3), generator=gen)
    place = torch.rand(count, 3, 2, generator=gen)
    strength = 1 + 2 * torch.rand(count, 3, generator=gen)
    radius = 0.08 + 0.12 * torch.rand(count, 3, generator=gen)  # fraction of the image side
    maps = []
    for (d, h, w), sig in zip(shapes, signatures):
        layer = 0.5 * torch.randn(count, d, h, w, generator=gen) + 0.3 * torch.randn(count, d, 1, 1, generator=gen)
        ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
        for q in range(3):
            on = (q < present).float() * strength[:, q]
            dy = ys[None, :] - place[:, q, 0, None]
            dx = xs[None, :] - place[:, q, 1, None]
            blob = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * radius[:, q, None, None] ** 2))
            layer += on[:, None, None, None] * sig[which[:, q]][:, :, None, None] * blob[:, None]
        maps.append(layer)
    concepts = torch.zeros(count, CONCEPTS, dtype=torch.bool)
    for q in range(3):
        on = q < present
        concepts[torch.nonzero(on).flatten(), which[on, q]] = True
    return maps, concepts


def noise_items(count: int, seed: int, shapes: Sequence[tuple[int, int, int]] = SHAPES) -> tuple[list[Tensor], Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(count, *s, generator=gen) for s in shapes], torch.zeros(count, CONCEPTS, dtype=torch.bool)


def make_items(kind: str, count: int, seed: int) -> tuple[list[Tensor], Tensor]:
    if kind == "concepts":
        return concept_items(count, seed)
    if kind == "noise":
        return noise_items(count, seed)
    raise ValueError(f"unknown item kind {kind!r}")


class ArrayCatalogue:
    """A read-only catalogue over fp16 maps [(I, d, H_j, W_j)] in memory, with what the recommender
    and the retrieval stage read of a catalogue (mmrec.retrieval.ItemSource)."""

    def __init__(self, maps: Sequence[Tensor]) -> None:
        self._maps = list(maps)
        self._n = self._maps[0].shape[0]
        self._bias = torch.zeros(self._n)
        self._ids: list[str] | None = None

    revision = 1

    def rows_changed_since(self, revision: int) -> Tensor:
        return torch.arange(self._n) if revision < 1 else torch.zeros(0, dtype=torch.long)

    @property
    def item_bias(self) -> Tensor:
        return self._bias

    @property
    def item_factors(self) -> Tensor:
        """(I, 0): synthetic catalogues serve the faithful model."""
        return self._bias.new_zeros(self._n, 0)

    @property
    def ids(self) -> Sequence[str]:
        if self._ids is None:
            self._ids = [f"s{i:07d}" for i in range(self._n)]
        return self._ids

    @property
    def layer_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((m.shape[1], m.shape[2], m.shape[3]) for m in self._maps)

    def __len__(self) -> int:
        return self._n

    def float_maps(self, index: slice | Tensor | None = None) -> list[Tensor]:
        if index is None:
            index = slice(0, self._n)
        if isinstance(index, slice):
            return [m[index].float() for m in self._maps]
        return [m.index_select(0, index).float() for m in self._maps]


class MemmapCatalogue(ArrayCatalogue):
    """fp16 maps in one file per layer under `folder` (write_memmap), read through the page cache:
    the process holds what refreshes touch, not the catalogue's size on disk. The maps are tensors
    over private (copy-on-write, never written) mappings, so rows are gathered by torch's
    index_select, as from the in-memory catalogue, not by numpy's fancy indexing (measured: a 1M-item
    refresh's gathers 1.7 against 2.4 ms).

    rows: serve only the first `rows` of the `count` items in the files (default: all).
    """

    def __init__(self, folder: Path, count: int, shapes: Sequence[tuple[int, int, int]] = SHAPES, rows: int | None = None) -> None:
        files = [np.memmap(folder / f"layer{j}.f16", dtype=np.float16, mode="c", shape=(count, *s)) for j, s in enumerate(shapes)]
        super().__init__([torch.from_numpy(f[:rows]) for f in files])


def write_memmap(folder: Path, kind: str, count: int, seed: int, workers: int | None = None) -> None:
    """Writes `count` synthetic items as fp16 files (layer0.f16, ...) under folder, chunk by chunk,
    in parallel processes (deterministic: each chunk has its own seed)."""
    from concurrent.futures import ProcessPoolExecutor

    folder.mkdir(parents=True, exist_ok=True)
    for j, shape in enumerate(SHAPES):
        np.memmap(folder / f"layer{j}.f16", dtype=np.float16, mode="w+", shape=(count, *shape)).flush()
    jobs = [(folder, kind, count, seed, start, min(start + _CHUNK, count)) for start in range(0, count, _CHUNK)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            _write_chunk(*job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_chunk, *zip(*jobs)))


def _write_chunk(folder: Path, kind: str, count: int, seed: int, start: int, stop: int) -> None:
    torch.set_num_threads(1)
    maps, _ = make_items(kind, stop - start, seed * 1_000_003 + start)
    for j, (shape, layer) in enumerate(zip(SHAPES, maps)):
        out = np.memmap(folder / f"layer{j}.f16", dtype=np.float16, mode="r+", shape=(count, *shape))
        out[start:stop] = layer.to(torch.float16).numpy()
        out.flush()


def in_memory(kind: str, count: int, seed: int) -> ArrayCatalogue:
    parts: list[list[Tensor]] = [[] for _ in SHAPES]
    for start in range(0, count, _CHUNK):
        maps, _ = make_items(kind, min(_CHUNK, count - start), seed * 1_000_003 + start)
        for j, m in enumerate(maps):
            parts[j].append(m.to(torch.float16))
    return ArrayCatalogue([torch.cat(p) for p in parts])


@dataclass(frozen=True)
class TrainedUsers:
    offsets: Tensor  # (U, P)
    tastes: Tensor  # (U, 2) liked concepts


def train_users(count: int, cfg: ModelConfig, shared: SharedParams, events: int = 80, seed: int = 7, items: int = 4096) -> TrainedUsers:
    """Users whose state comes from `events` online steps each: a click on an item holding one of
    their two liked concepts against 4 random items (the worker's own examples)."""
    maps, concepts = concept_items(items, seed=seed + 100)
    learner = OnlineLearner(cfg, shared, OnlineConfig())
    gen = torch.Generator().manual_seed(seed)
    offsets, tastes = [], []
    labels = torch.tensor([1.0, 0, 0, 0, 0])
    weights = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.5])
    for u in range(count):
        taste = torch.randperm(CONCEPTS, generator=gen)[:2]
        liked = torch.nonzero(concepts[:, taste].any(dim=1)).flatten()
        state = UserState.new(cfg)
        for e in range(events):
            rows = torch.cat([liked[torch.randint(len(liked), (1,), generator=gen)], torch.randint(0, items, (4,), generator=gen)])
            example = Examples([m[rows] for m in maps], torch.zeros(5), labels, weights)
            state = learner.step(state, example, f"u{u}-e{e}").state
        offsets.append(state.offsets)
        tastes.append(taste)
    return TrainedUsers(torch.stack(offsets), torch.stack(tastes))


def chunks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def fp16_bytes_per_item(shapes: Sequence[tuple[int, int, int]] = SHAPES) -> int:
    return 2 * sum(math.prod(s) for s in shapes)


def free_disk_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
