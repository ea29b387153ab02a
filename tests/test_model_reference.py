"""The vectorised scorer equals the naive per-pair reference, in value and in gradient."""
from __future__ import annotations

import pytest
import torch

from mmrec.model import ModelConfig, ParamLayout, SharedParams, pair_scores, score
from mmrec.bench.naive import reference_score

CASES = [
    # (config, users, items, grids)
    (ModelConfig(), 1, 1, [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(), 16, 24, [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(readout="per_channel"), 5, 7, [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(n_layers=1, kernel_size=1, channels=1, pool=1), 3, 4, [(5, 5)]),
    (ModelConfig(n_layers=2, kernel_size=5, channels=4, pool=3), 4, 6, [(11, 9), (4, 6)]),
    (ModelConfig(n_layers=2, kernel_size=3, channels=3, pool=2, readout="per_channel"), 6, 3, [(9, 13), (3, 3)]),
    (ModelConfig(n_layers=4, kernel_size=3, channels=16, pool=2), 12, 20, [(8, 8), (6, 6), (5, 5), (2, 2)]),
]


def random_problem(cfg: ModelConfig, users: int, items: int, grids: list[tuple[int, int]], dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    layout = ParamLayout(cfg)
    shared = SharedParams.initial(cfg).to(dtype)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.visual_bias = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.global_bias = torch.tensor(0.3, dtype=dtype)
    offsets = 0.5 * torch.randn(users, layout.size, generator=gen, dtype=dtype)
    maps = [torch.randn(items, cfg.channels, h, w, generator=gen, dtype=dtype) for h, w in grids]
    item_bias = torch.randn(items, generator=gen, dtype=dtype)
    return layout, shared, offsets, maps, item_bias


@pytest.mark.parametrize("cfg,users,items,grids", CASES)
def test_batched_scorer_equals_naive_reference(cfg, users, items, grids):
    layout, shared, offsets, maps, item_bias = random_problem(cfg, users, items, grids, torch.float64, seed=1)
    params = layout.split(shared.prior + offsets)
    fast = score(params, maps, item_bias, shared, cfg)
    slow = reference_score(params, maps, item_bias, shared, cfg)
    assert fast.shape == (users, items)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cfg,users,items,grids", CASES[:3])
def test_batched_scorer_equals_reference_in_float32_within_1e_5(cfg, users, items, grids):
    layout, shared, offsets, maps, item_bias = random_problem(cfg, users, items, grids, torch.float32, seed=2)
    params = layout.split(shared.prior + offsets)
    fast = score(params, maps, item_bias, shared, cfg)
    slow = reference_score(params, maps, item_bias, shared, cfg)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg,users,items,grids", CASES)
def test_gradients_wrt_user_parameters_match_reference_autograd(cfg, users, items, grids):
    layout, shared, offsets, maps, item_bias = random_problem(cfg, users, items, grids, torch.float64, seed=3)
    weights = torch.randn(users, items, dtype=torch.float64)
    grads = []
    for scorer in (score, reference_score):
        leaf = offsets.clone().requires_grad_(True)
        total = (scorer(layout.split(shared.prior + leaf), maps, item_bias, shared, cfg) * weights).sum()
        (grad,) = torch.autograd.grad(total, leaf)
        grads.append(grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cfg,users,items,grids", CASES)
def test_pair_scores_equal_the_reference_for_aligned_pairs(cfg, users, items, grids):
    layout, shared, offsets, maps, item_bias = random_problem(cfg, users, items, grids, torch.float64, seed=4)
    gen = torch.Generator().manual_seed(5)
    u = torch.randint(0, users, (9,), generator=gen)
    i = torch.randint(0, items, (9,), generator=gen)
    slow = torch.stack([
        reference_score(layout.split(shared.prior + offsets[a : a + 1]), [m[b : b + 1] for m in maps], item_bias[b : b + 1], shared, cfg)[0, 0]
        for a, b in zip(u.tolist(), i.tolist())
    ])
    fast = pair_scores(layout.split(shared.prior + offsets[u]), [m[i] for m in maps], item_bias[i], shared, cfg)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
