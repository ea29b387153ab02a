"""The fast scoring paths equal the claims' formulation, whichever route a call takes.

model.preference() sends >= 16 users through one channels-last convolution (users as output
channels) and fewer users through the pairs path (pairs as the channels of a depthwise
convolution); model.pair_scores() takes one row of parameters per pair or one shared row. Each is
checked in float64 against layer_readout (the claims' formulation, itself checked against the
naive reference in test_claims / test_model_reference), values and gradients.
"""
from __future__ import annotations

import pytest
import torch

from mmrec import model
from mmrec.model import ModelConfig, ParamLayout, SharedParams, layer_readout, pair_scores, score, visual_item_bias

CONFIGS = [
    (ModelConfig(), [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(readout="per_channel"), [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(n_layers=2, kernel_size=5, channels=4, pool=3), [(11, 9), (4, 6)]),
    (ModelConfig(n_layers=2, kernel_size=3, channels=3, pool=2, readout="per_channel"), [(9, 13), (3, 3)]),
    (ModelConfig(n_layers=1, kernel_size=1, channels=1, pool=1), [(5, 5)]),
]


def problem(cfg: ModelConfig, grids, users: int, items: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    layout = ParamLayout(cfg)
    shared = SharedParams.initial(cfg).to(torch.float64)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=torch.float64)
    shared.visual_bias = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=torch.float64)
    shared.global_bias = torch.tensor(0.2, dtype=torch.float64)
    offsets = 0.5 * torch.randn(users, layout.size, generator=gen, dtype=torch.float64)
    maps = [torch.randn(items, cfg.channels, h, w, generator=gen, dtype=torch.float64) for h, w in grids]
    item_bias = torch.randn(items, generator=gen, dtype=torch.float64)
    return layout, shared, offsets, maps, item_bias


def claims_score(params, maps, item_bias, shared, cfg):
    """score() written with layer_readout, the claims' (I, U, h, w) formulation."""
    fused = 0.0
    for j, layer_maps in enumerate(maps):
        out = layer_readout(layer_maps, params.interest[:, j], params.channel[:, j], params.attention[:, j], shared.attention_channels[j], cfg)
        fused = fused + params.fusion[:, j : j + 1] * out.preference()
    return shared.global_bias + params.bias[:, None] + (item_bias + visual_item_bias(maps, shared))[None, :] + fused


# Both sides of model._FEW_USERS for every configuration; the edges for the default one.
@pytest.mark.parametrize("cfg,grids,users", [(*c, u) for c in CONFIGS for u in (3, 16)] + [(*CONFIGS[0], u) for u in (1, 24)])
def test_dense_scores_and_gradients_equal_the_claims_formulation(cfg, grids, users):
    assert model._FEW_USERS == 16
    layout, shared, offsets, maps, item_bias = problem(cfg, grids, users, items=7)
    weights = torch.randn(users, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = []
    for scorer in (score, claims_score):
        leaf = offsets.clone().requires_grad_(True)
        values = scorer(layout.split(shared.prior + leaf), maps, item_bias, shared, cfg)
        (grad,) = torch.autograd.grad((values * weights).sum(), leaf)
        results.append((values.detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("cfg,grids", CONFIGS)
def test_pair_scores_with_one_shared_row_equal_that_users_dense_row(cfg, grids):
    layout, shared, offsets, maps, item_bias = problem(cfg, grids, users=16, items=4, seed=2)
    dense = score(layout.split(shared.prior + offsets), maps, item_bias, shared, cfg)
    for u in (0, 15):
        one = pair_scores(layout.split(shared.prior + offsets[u : u + 1]), maps, item_bias, shared, cfg)
        torch.testing.assert_close(one, dense[u], rtol=0, atol=1e-10)


def test_pair_scores_gradient_reaches_the_shared_attention_channels():
    """Training differentiates pair_scores in the shared parts too (mmrec/training.py)."""
    cfg, grids = CONFIGS[0]
    layout, shared, offsets, maps, item_bias = problem(cfg, grids, users=6, items=6, seed=3)
    grads = []
    for scorer in ("pairs", "claims"):
        g = shared.attention_channels.clone().requires_grad_(True)
        live = SharedParams(shared.prior, g, shared.visual_bias, shared.global_bias)
        params = layout.split(shared.prior + offsets)
        if scorer == "pairs":
            total = pair_scores(params, maps, item_bias, live, cfg).sum()
        else:
            total = claims_score(params, maps, item_bias, live, cfg).diagonal().sum()
        grads.append(torch.autograd.grad(total, g)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-10)


def test_ties_in_max_pooling_are_scored_like_the_claims_formulation():
    """A new user (zero channel factor) has an all-zero first feature matrix: every window ties."""
    cfg, grids = CONFIGS[0]
    layout, shared, _, maps, item_bias = problem(cfg, grids, users=20, items=5, seed=5)
    prior = shared.prior.expand(20, -1)
    torch.testing.assert_close(
        score(layout.split(prior), maps, item_bias, shared, cfg), claims_score(layout.split(prior), maps, item_bias, shared, cfg), rtol=0, atol=1e-12
    )
