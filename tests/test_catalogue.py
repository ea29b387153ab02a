"""Catalogue: dense per-layer maps with stable rows, amortised growth and strict version/shape."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mmrec.catalogue import Catalogue
from mmrec.feature_store import MemoryFeatureStore, SqliteFeatureStore
from tests.synthetic_items import DEFAULT_SHAPES, OTHER_VERSION, VERSION, make_item, make_items

SMALL = ((3, 4, 4), (3, 2, 2))


def _check_rows(cat: Catalogue, items: list) -> None:  # type: ignore[type-arg]
    """Each item's maps sit, bit-exact, at its row in every layer."""
    maps = cat.float_maps(cat.rows([i.media_id for i in items]))
    for j, layer in enumerate(maps):
        assert torch.equal(layer, torch.stack([i.maps[j].float() for i in items]))


def test_add_assigns_rows_in_order_and_shapes_from_first_item() -> None:
    cat = Catalogue(VERSION)
    assert len(cat) == 0 and cat.layer_shapes is None
    items = make_items(5, shapes=SMALL)
    rows = cat.add(items)
    assert rows.tolist() == [0, 1, 2, 3, 4] and rows.dtype == torch.long
    assert cat.layer_shapes == SMALL and len(cat) == 5
    assert list(cat.ids) == [i.media_id for i in items]
    assert "m0000002" in cat and "zzz" not in cat
    _check_rows(cat, items)


def test_growth_doubles_capacity_and_keeps_contents() -> None:
    cat = Catalogue(VERSION)
    items = make_items(300, shapes=SMALL)
    capacities = []
    for item in items:
        cat.add([item])
        capacities.append(cat.capacity)
    distinct = sorted(set(capacities))
    assert distinct == [16, 32, 64, 128, 256, 512]  # log2-many reallocations, not one per add
    assert len(cat) == 300
    _check_rows(cat, items)
    per_row = sum(2 * d * h * w for d, h, w in SMALL) + 4  # fp16 maps + fp32 bias
    assert cat.nbytes == 512 * per_row


def test_add_batch_larger_than_double_capacity() -> None:
    cat = Catalogue(VERSION, layer_shapes=SMALL, capacity=4)
    cat.add(make_items(3, shapes=SMALL))
    cat.add(make_items(100, start=3, shapes=SMALL))
    assert len(cat) == 103 and cat.capacity >= 103
    _check_rows(cat, make_items(103, shapes=SMALL))


def test_replace_keeps_row_and_bias() -> None:
    cat = Catalogue(VERSION)
    items = make_items(4, shapes=SMALL)
    cat.add(items)
    cat.item_bias[2] = 0.75
    new = make_item("m0000002", seed=42, shapes=SMALL)
    rows = cat.add([new, make_item("fresh", seed=7, shapes=SMALL)])
    assert rows.tolist() == [2, 4]
    assert len(cat) == 5
    assert cat.item_bias.tolist() == [0.0, 0.0, 0.75, 0.0, 0.0]
    _check_rows(cat, [items[0], items[1], new, items[3]])


def test_repeated_id_in_one_batch_keeps_the_last() -> None:
    cat = Catalogue(VERSION)
    first, last = make_item("x", seed=1, shapes=SMALL), make_item("x", seed=2, shapes=SMALL)
    rows = cat.add([first, make_item("y", shapes=SMALL), last])
    assert rows.tolist() == [0, 1, 0] and len(cat) == 2
    _check_rows(cat, [last])


def test_rows_and_float_maps_index_forms() -> None:
    cat = Catalogue(VERSION)
    items = make_items(10, shapes=SMALL)
    cat.add(items)
    assert cat.rows(["m0000009", "m0000000", "m0000009"]).tolist() == [9, 0, 9]
    with pytest.raises(KeyError, match="nope"):
        cat.rows(["m0000001", "nope"])
    whole = cat.float_maps()
    assert [tuple(m.shape) for m in whole] == [(10, 3, 4, 4), (10, 3, 2, 2)]
    assert all(m.dtype == torch.float32 for m in whole)
    chunk = cat.float_maps(slice(4, 8))
    assert all(torch.equal(c, w[4:8]) for c, w in zip(chunk, whole))
    assert [m.shape[0] for m in cat.float_maps(slice(8, 100))] == [2, 2]  # clipped to live rows
    picked = cat.float_maps(torch.tensor([3, 1]))
    assert all(torch.equal(p, w[[3, 1]]) for p, w in zip(picked, whole))
    with pytest.raises(IndexError):
        cat.float_maps(torch.tensor([10]))  # allocated but not live
    with pytest.raises(ValueError, match="long"):
        cat.float_maps(torch.tensor([1.0]))


def test_float_maps_are_copies() -> None:
    cat = Catalogue(VERSION)
    item = make_item("a", shapes=SMALL)
    cat.add([item])
    cat.float_maps()[0].zero_()
    _check_rows(cat, [item])


def test_version_mismatch_rejected_atomically() -> None:
    cat = Catalogue(VERSION)
    cat.add(make_items(2, shapes=SMALL))
    foreign = make_item("other", version=OTHER_VERSION, shapes=SMALL)
    with pytest.raises(ValueError, match="feature version"):
        cat.add([make_item("ok", shapes=SMALL), foreign])
    assert len(cat) == 2 and "ok" not in cat


def test_shape_mismatch_rejected() -> None:
    cat = Catalogue(VERSION, layer_shapes=SMALL)
    with pytest.raises(ValueError, match="layer shapes"):
        cat.add([make_item("a", shapes=((3, 4, 4), (3, 1, 1)))])
    with pytest.raises(ValueError, match="layer shapes"):
        cat.add([make_item("b", shapes=SMALL[:1])])  # fewer layers
    first_wins = Catalogue(VERSION)
    with pytest.raises(ValueError, match="layer shapes"):
        first_wins.add([make_item("a", shapes=SMALL), make_item("b", shapes=((4, 4, 4), (4, 2, 2)))])
    assert len(cat) == 0 and len(first_wins) == 0
    with pytest.raises(ValueError, match=r"\(d, H, W\)"):
        Catalogue(VERSION).add([replace(make_item("c", shapes=SMALL), maps=(torch.zeros(4, 4),))])


def test_empty_catalogue() -> None:
    cat = Catalogue(VERSION)
    assert cat.add([]).tolist() == [] and cat.nbytes == 0
    with pytest.raises(ValueError, match="empty"):
        cat.float_maps()
    shaped = Catalogue(VERSION, layer_shapes=SMALL)
    assert [tuple(m.shape) for m in shaped.float_maps()] == [(0, 3, 4, 4), (0, 3, 2, 2)]
    assert shaped.item_bias.shape == (0,)


def test_load_from_store_filters_version_and_sizes_once(tmp_path: Path) -> None:
    items = make_items(1500)  # more than one load batch, default shapes
    with SqliteFeatureStore(tmp_path / "f.sqlite3") as store:
        store.put_many(items[:700])
        store.put_many(make_items(5, start=10_000, version=OTHER_VERSION, shapes=SMALL))
        store.put_many(items[700:])
        cat = Catalogue.load(store, VERSION)
    assert list(cat.ids) == [i.media_id for i in items]
    assert cat.capacity == 1500 and cat.layer_shapes == DEFAULT_SHAPES
    assert torch.equal(cat.item_bias, torch.zeros(1500))
    _check_rows(cat, items[::37])
    assert cat.nbytes == 1500 * (7056 + 4)


def test_load_empty_and_foreign_only_store() -> None:
    store = MemoryFeatureStore()
    assert len(Catalogue.load(store, VERSION)) == 0
    store.put(make_item("a", version=OTHER_VERSION))
    cat = Catalogue.load(store, VERSION)
    assert len(cat) == 0 and cat.version == VERSION
