"""BPR matrix factorisation, VBPR, and the perfect-perception reference: one factor model, three inputs.

    x_ui = b_i + p_u . q_i + theta_u . (E f_i) + beta . f_i

BPR-MF (Rendle et al. 2009) has no item features f; VBPR (He & McAuley 2016) takes f_i = spatially
pooled CNN features of the item from our backbone (`features`: "maps", the spatial means of the
projected maps our model scores, or "penultimate", block 18 global-average-pooled, 1280-d; the grid
tries both); the perfect-perception reference takes f_i = the benchmark's true attributes (which
garment classes the item shows, its background), i.e. VBPR with perfect eyes. Features are
standardised per dimension. p, q, theta: dim; E: (F, dim).

Training (BPR): every distinct (user, item) engagement of the training log against an item drawn
uniformly from the items seen in training, loss -log sigmoid(x_ui - x_uj) + reg * (squared norms of
the parameters the triple touches), Adam, minibatches, seeded. Items without a training event keep
q_i = 0 and b_i = 0 (cold items: ranked by the visual terms only; BPR-MF ties them). Online (the
prequential mode): each engagement takes one plain SGD step on the same loss against
`online_negatives` sampled items, moving p_u, theta_u, q_i, b_i, q_j, b_j (E and beta stay).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.protocol import RankerSpec, grid
from mmrec.interaction_log import Event, InteractionLog


class FactorRanker(nn.Module):
    """x_ui of the module docstring; features (I, F) or None (BPR-MF)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        features: Tensor | None = None,
        dim: int = 32,
        reg: float = 1e-3,
        lr: float = 0.005,
        epochs: int = 20,
        batch_size: int = 2048,
        online_lr: float = 0.01,
        online_negatives: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.reg, self.lr, self.epochs, self.batch_size = reg, lr, epochs, batch_size
        self.online_lr, self.online_negatives = online_lr, online_negatives
        self.generator = torch.Generator().manual_seed(seed)
        self.user = nn.Parameter(torch.randn(num_users, dim, generator=self.generator) * 0.01)
        self.item = nn.Parameter(torch.randn(num_items, dim, generator=self.generator) * 0.01)
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        self.features: Tensor | None = None
        if features is not None:
            std = features.std(dim=0).clamp(min=1e-6)
            self.features = (features - features.mean(dim=0)) / std  # (I, F)
            self.taste = nn.Parameter(torch.randn(num_users, dim, generator=self.generator) * 0.01)  # theta
            self.embed = nn.Parameter(torch.randn(features.shape[1], dim, generator=self.generator) / features.shape[1] ** 0.5)  # E
            self.visual_bias = nn.Parameter(torch.zeros(features.shape[1]))  # beta
        self.known = torch.zeros(0, dtype=torch.long)  # items negatives are drawn from
        self._visual: tuple[Tensor, Tensor] | None = None  # (I, dim) E f_i and (I,) beta . f_i, set by fit

    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None:
        pos = train.positive
        pairs = torch.from_numpy(np.unique(np.stack([train.user[pos], train.item[pos]], axis=1), axis=0))
        self.known = torch.from_numpy(np.unique(train.item))
        optimiser = torch.optim.Adam(self.parameters(), lr=self.lr)
        for _ in tqdm(range(self.epochs), desc="epochs", unit="epoch", leave=False):
            for batch in torch.randperm(pairs.shape[0], generator=self.generator).split(self.batch_size):
                users, items = pairs[batch, 0], pairs[batch, 1]
                negatives = self.known[torch.randint(0, self.known.numel(), (batch.numel(),), generator=self.generator)]
                loss = self._loss(users, items, negatives)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        with torch.no_grad():
            untrained = torch.ones(self.item.shape[0], dtype=torch.bool)
            untrained[self.known] = False
            self.item[untrained] = 0.0
            self.item_bias[untrained] = 0.0
            if self.features is not None:
                self._visual = (self.features @ self.embed, self.features @ self.visual_bias)

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.item_bias[items][None, :] + self.user[users] @ self.item[items].T
            if self._visual is not None:
                visual, bias = self._visual
                out = out + self.taste[users] @ visual[items].T + bias[items][None, :]
            return out

    def learn(self, event: Event) -> None:
        if not bool((self.known == event.item).any()):
            self.known = torch.cat([self.known, torch.tensor([event.item])])
        if event.label < 0.5:
            return
        n = self.online_negatives
        negatives = self.known[torch.randint(0, self.known.numel(), (n,), generator=self.generator)]
        rows = {"p": self.user[event.user], "q_i": self.item[event.item], "b_i": self.item_bias[event.item],
                "q_j": self.item[negatives], "b_j": self.item_bias[negatives]}
        if self._visual is not None:
            rows["theta"] = self.taste[event.user]
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in rows.items()}
        diff = leaf["b_i"] - leaf["b_j"] + leaf["p"] @ (leaf["q_i"][None, :] - leaf["q_j"]).T
        if self._visual is not None:
            visual, bias = self._visual
            diff = diff + leaf["theta"] @ (visual[event.item][None, :] - visual[negatives]).T + bias[event.item] - bias[negatives]
        loss = -F.logsigmoid(diff).sum() + self.reg * sum(t.square().sum() for t in leaf.values())
        grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values()))))
        with torch.no_grad():
            step = self.online_lr
            self.user[event.user] -= step * grads["p"]
            self.item[event.item] -= step * grads["q_i"]
            self.item_bias[event.item] -= step * grads["b_i"]
            self.item.index_add_(0, negatives, -step * grads["q_j"])
            self.item_bias.index_add_(0, negatives, -step * grads["b_j"])
            if "theta" in grads:
                self.taste[event.user] -= step * grads["theta"]

    def _loss(self, users: Tensor, items: Tensor, negatives: Tensor) -> Tensor:
        """Mean BPR loss of the triples plus reg times the touched parameters' squared norms per triple."""
        diff = self._pair_scores(users, items) - self._pair_scores(users, negatives)
        touched = [self.user[users], self.item[items], self.item[negatives], self.item_bias[items], self.item_bias[negatives]]
        if self.features is not None:
            touched.append(self.taste[users])
        penalty = sum(t.square().sum() for t in touched) / users.numel()
        if self.features is not None:
            penalty = penalty + self.embed.square().sum() / self.embed.shape[0] + self.visual_bias.square().mean()
        return -F.logsigmoid(diff).mean() + self.reg * penalty

    def _pair_scores(self, users: Tensor, items: Tensor) -> Tensor:
        """x_ui for aligned (B,) users and items."""
        out = self.item_bias[items] + (self.user[users] * self.item[items]).sum(dim=1)
        if self.features is not None:
            f = self.features[items]
            out = out + (self.taste[users] * (f @ self.embed)).sum(dim=1) + f @ self.visual_bias
        return out


def _bpr_mf(data: EvaluationData, params: Mapping[str, Any]) -> FactorRanker:
    return FactorRanker(data.log.num_users, data.log.num_items, None, seed=data.seed, **params)


def _vbpr(data: EvaluationData, params: Mapping[str, Any]) -> FactorRanker:
    rest = {k: v for k, v in params.items() if k != "features"}
    features = data.pooled_features(params["features"])
    return FactorRanker(data.log.num_users, data.log.num_items, features, seed=data.seed, **rest)


def _perfect_perception(data: EvaluationData, params: Mapping[str, Any]) -> FactorRanker:
    if data.attributes is None:
        raise ValueError("the perfect-perception reference needs the benchmark's true attributes")
    return FactorRanker(data.log.num_users, data.log.num_items, data.attributes, seed=data.seed, **params)


# One grid for all three (VBPR also picks its feature kind): the comparison is between inputs.
GRID = grid(dim=(32, 64), reg=(1e-3, 1e-2, 1e-1), lr=(0.003, 0.01))

BPR_MF = RankerSpec("bpr-mf", _bpr_mf, GRID, description="BPR matrix factorisation (Rendle et al. 2009)")
VBPR = RankerSpec(
    "vbpr",
    _vbpr,
    tuple({**p, "features": kind} for kind in ("maps", "penultimate") for p in GRID),
    requires=frozenset({"media"}),
    description="VBPR (He & McAuley 2016) on pooled features of our backbone",
)
PERFECT_PERCEPTION = RankerSpec(
    "perfect-perception",
    _perfect_perception,
    GRID,
    requires=frozenset({"attributes"}),
    description="VBPR handed the true visual attributes instead of pixels",
)
