"""A naive, obviously-correct scorer: one (user, item) pair at a time, one channel at a time.

Only torch.nn.functional.conv2d on single 2-D maps, explicit window loops for pooling and the claim-8
formula written out. Slow by design: the test suite's oracle (the vectorised scorer in mmrec.model
must agree with it) and the baseline the `scoring` benchmark times.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.model import ModelConfig, SharedParams, UserParams


def conv_same(plane: Tensor, kernel: Tensor) -> Tensor:
    """(H, W) plane (*) (m, m) kernel with zero 'same' padding -> (H, W)."""
    pad = kernel.shape[-1] // 2
    return F.conv2d(plane[None, None], kernel[None, None], padding=pad)[0, 0]


def windows(height: int, width: int, p: int) -> list[list[tuple[slice, slice]]]:
    """The p x p pooling windows of an (H, W) grid, the last ones partial (ceil mode)."""
    rows = math.ceil(height / p)
    cols = math.ceil(width / p)
    return [[(slice(s * p, min((s + 1) * p, height)), slice(t * p, min((t + 1) * p, width))) for t in range(cols)] for s in range(rows)]


def pair_layer(fmap: Tensor, k: Tensor, c: Tensor, q: Tensor, g: Tensor, cfg: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    """One user, one item, one layer: fmap (d, H, W) -> (o, pooled (h, w), weights (h, w))."""
    d, height, width = fmap.shape
    per_channel = [conv_same(fmap[ch], k) for ch in range(d)]
    if cfg.readout == "spanning":
        first = sum(c[ch] * per_channel[ch] for ch in range(d))
        pooled_window = lambda sl: first[sl].max()  # noqa: E731
    else:
        stacked = torch.stack(per_channel)
        pooled_window = lambda sl: stacked[(slice(None), *sl)].max()  # noqa: E731
    grid = windows(height, width, cfg.pool)
    pooled = torch.stack([torch.stack([pooled_window(sl) for sl in row]) for row in grid])
    reduced = sum(g[ch] * fmap[ch] for ch in range(d))
    coarse = torch.stack([torch.stack([reduced[sl].mean() for sl in row]) for row in grid])
    second = conv_same(coarse, q)
    weights = torch.exp(second) / torch.exp(second).sum()  # claim 8, written out
    return (weights * pooled).sum(), pooled, weights


def reference_score(
    params: UserParams, maps: list[Tensor], item_bias: Tensor, shared: SharedParams, cfg: ModelConfig, item_factors: Tensor | None = None
) -> Tensor:
    """(U, I) scores computed pair by pair; item_factors (I, k) for the hybrid extension's term."""
    users, items = params.flat.shape[0], maps[0].shape[0]
    out = torch.zeros(users, items, dtype=maps[0].dtype)
    for u in range(users):
        for i in range(items):
            fused = 0.0
            for j in range(cfg.n_layers):
                o, _, _ = pair_layer(
                    maps[j][i],
                    params.interest[u, j],
                    params.channel[u, j],
                    params.attention[u, j],
                    shared.attention_channels[j],
                    cfg,
                )
                fused = fused + params.fusion[u, j] * o
            visual = sum((maps[j][i].mean(dim=(1, 2)) * shared.visual_bias[j]).sum() for j in range(cfg.n_layers))
            collab = sum(params.collab[u, c] * item_factors[i, c] for c in range(cfg.collab_dim)) if cfg.collab_dim else 0.0
            out[u, i] = shared.global_bias + params.bias[u] + item_bias[i] + visual + fused + collab
    return out
