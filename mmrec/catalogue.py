"""The scorer's dense in-memory view of every item of one FeatureVersion.

Shapes: I items (len), C >= I allocated rows (capacity), N layers, d channels, (H_j, W_j) grids.
    maps[j]  (C, d, H_j, W_j)  float16, rows [0, I) live, row r holds ids[r]
    bias     (C,)              float32 learned per-item residual, 0 for an item never trained on
    factors  (C, k)            float32 collaborative factors of the hybrid extension (k = 0: none),
                               0 for an item never trained on

Rows are stable: an id keeps its row for the catalogue's life (a re-added id is replaced in place).
One writer thread (add, bias and factor writes). Other threads may read meanwhile: a new row is
published (in ids, len, rows_changed_since) only after its maps are written, and storage grows by
swapping in copies. A row replaced in place can be read half-written; features are deterministic per media and
feature version, so a replacement normally writes the bits the row already holds.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice

import torch
from torch import Tensor

from mmrec.feature_store import FeatureStore
from mmrec.features import FeatureVersion, ItemFeatures

LayerShape = tuple[int, int, int]  # (d, H_j, W_j)
_MIN_CAPACITY = 16
_LOAD_BATCH = 1024


class Catalogue:
    """Per-layer dense fp16 maps, ids, id -> row, a per-item bias residual and collaborative factors."""

    def __init__(
        self,
        version: FeatureVersion,
        layer_shapes: Sequence[LayerShape] | None = None,
        capacity: int = 0,
        factor_dim: int = 0,
    ) -> None:
        """layer_shapes: [(d, H_j, W_j)] * N, or None to take them from the first item added;
        factor_dim: k of the hybrid extension's item factors (0 for the faithful model)."""
        self.version = version
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._maps: list[Tensor] = []
        self._bias = torch.zeros(0)
        self._factors = torch.zeros(0, factor_dim)
        self._revision = 0
        self._row_revision = torch.zeros(0, dtype=torch.long)  # revision that last wrote each row
        self._shapes: tuple[LayerShape, ...] | None = None
        if layer_shapes is not None:
            self._allocate(tuple((d, h, w) for d, h, w in layer_shapes), capacity)

    @classmethod
    def load(cls, store: FeatureStore, version: FeatureVersion, factor_dim: int = 0) -> Catalogue:
        """Every item of `version` in the store, in the store's order, sized up front from its count."""
        items = store.iter_items(version)
        batch = list(islice(items, _LOAD_BATCH))
        if not batch:
            return cls(version, factor_dim=factor_dim)
        cat = cls(version, _shapes_of(batch[0]), capacity=store.versions().get(version, 0), factor_dim=factor_dim)
        while batch:
            cat.add(batch)
            batch = list(islice(items, _LOAD_BATCH))
        return cat

    @property
    def layer_shapes(self) -> tuple[LayerShape, ...] | None:
        """[(d, H_j, W_j)] * N, None while empty and unshaped."""
        return self._shapes

    @property
    def ids(self) -> Sequence[str]:
        """Media id of each row (I,). Read-only view; add() extends it."""
        return self._ids

    @property
    def capacity(self) -> int:
        return self._bias.shape[0]

    @property
    def item_bias(self) -> Tensor:
        """Writable (I,) float32 view of the bias residual; add() may reallocate (take a new view)."""
        return self._bias[: len(self._ids)]

    @property
    def item_factors(self) -> Tensor:
        """Writable (I, k) float32 view of the collaborative factors; add() may reallocate."""
        return self._factors[: len(self._ids)]

    @property
    def factor_dim(self) -> int:
        return self._factors.shape[1]

    def set_factor_dim(self, k: int) -> None:
        """Give every row k zero factors (dropping any others): the hybrid extension's item side."""
        self._factors = torch.zeros(self.capacity, k)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for maps, bias and factors (capacity rows, not just the live ones)."""
        return sum(t.numel() * t.element_size() for t in (*self._maps, self._bias, self._factors))

    @property
    def revision(self) -> int:
        """Counts the add() calls that wrote maps; see rows_changed_since."""
        return self._revision

    def rows_changed_since(self, revision: int) -> Tensor:
        """Rows whose maps were written (added or replaced) after `revision` (K,) long: lets data
        derived per row (the retrieval index) follow the catalogue."""
        return torch.nonzero(self._row_revision[: len(self._ids)] > revision).flatten()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, media_id: object) -> bool:
        return media_id in self._row

    def add(self, items: Iterable[ItemFeatures]) -> Tensor:
        """Insert or replace items; returns the row of each (K,) long. A replaced item keeps its bias
        and factors.

        All items are checked first: on a version or shape mismatch nothing is added.
        """
        batch = list(items)
        if not batch:
            return torch.zeros(0, dtype=torch.long)
        self._check(batch)
        if self._shapes is None:
            self._allocate(_shapes_of(batch[0]), 0)
        latest = {item.media_id: item for item in batch}  # a repeated id: its last occurrence wins
        new_ids = [media_id for media_id in latest if media_id not in self._row]
        self._grow(len(self._ids) + len(new_ids))  # new rows' bias and factors are 0 from allocation
        placed = {media_id: len(self._ids) + k for k, media_id in enumerate(new_ids)}
        placed.update((media_id, self._row[media_id]) for media_id in latest if media_id in self._row)
        index = torch.tensor([placed[media_id] for media_id in latest], dtype=torch.long)
        for j, storage in enumerate(self._maps):
            storage[index] = torch.stack([item.maps[j] for item in latest.values()]).to(storage.dtype)
        self._row_revision[index] = self._revision + 1
        for media_id in new_ids:  # published only now that their maps are written (see the docstring)
            self._row[media_id] = placed[media_id]
            self._ids.append(media_id)
        self._revision += 1
        return torch.tensor([placed[item.media_id] for item in batch], dtype=torch.long)

    def rows(self, media_ids: Iterable[str]) -> Tensor:
        """Rows of media_ids (K,) long. Raises KeyError naming the unknown ids."""
        ids = list(media_ids)
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} ids not in catalogue, e.g. {missing[:5]}")
        return torch.tensor([self._row[i] for i in ids], dtype=torch.long)

    def float_maps(self, index: slice | Tensor | None = None) -> list[Tensor]:
        """Float32 copies of the maps of some rows, for scoring in chunks: [(K, d, H_j, W_j)] * N.

        index: a row range (slice), rows (K,) long, or None for every item.
        """
        n = len(self._ids)
        if self._shapes is None:
            raise ValueError("catalogue is empty and has no layer shapes yet")
        if index is None:
            index = slice(0, n)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            return [m[start:stop:step].float() for m in self._maps]
        if index.dtype != torch.long or index.dim() != 1:
            raise ValueError(f"rows must be a 1-D long tensor, got {index.dtype} {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(f"rows out of range [0, {n})")
        return [m.index_select(0, index).float() for m in self._maps]  # ~2.4x faster than m[index] here

    def _check(self, batch: list[ItemFeatures]) -> None:
        shapes = self._shapes or _shapes_of(batch[0])
        for item in batch:
            if item.version != self.version:
                raise ValueError(
                    f"item {item.media_id!r} has feature version {item.version}, catalogue holds {self.version}"
                )
            got = _shapes_of(item)
            if got != shapes:
                raise ValueError(f"item {item.media_id!r} has layer shapes {got}, catalogue holds {shapes}")

    def _allocate(self, shapes: tuple[LayerShape, ...], capacity: int) -> None:
        self._shapes = shapes
        self._maps = [torch.empty(0, *s, dtype=torch.float16) for s in shapes]
        self._resize(capacity)

    def _grow(self, needed: int) -> None:
        """Capacity doubling: amortised O(1) copying per added item."""
        if needed > self.capacity:
            self._resize(max(needed, 2 * self.capacity, _MIN_CAPACITY))

    def _resize(self, capacity: int) -> None:
        n = len(self._ids)
        maps = []
        for old in self._maps:
            new = torch.empty(capacity, *old.shape[1:], dtype=old.dtype)
            new[:n] = old[:n]
            maps.append(new)
        bias = torch.zeros(capacity)
        bias[:n] = self._bias[:n]
        factors = torch.zeros(capacity, self._factors.shape[1])
        factors[:n] = self._factors[:n]
        row_revision = torch.zeros(capacity, dtype=torch.long)
        row_revision[:n] = self._row_revision[:n]
        self._maps, self._bias, self._factors, self._row_revision = maps, bias, factors, row_revision


def _shapes_of(item: ItemFeatures) -> tuple[LayerShape, ...]:
    bad = [tuple(m.shape) for m in item.maps if m.dim() != 3]
    if bad or not item.maps:
        raise ValueError(f"item {item.media_id!r} needs N >= 1 maps of shape (d, H, W), got {bad or 'none'}")
    return tuple((m.shape[0], m.shape[1], m.shape[2]) for m in item.maps)
