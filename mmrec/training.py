"""Offline training (`mmrec train`): the shared parts and every user's offsets from an interaction log.

Fits, on the same loss as the online step, by Adam over shuffled minibatches of events:
    shared   prior (P,), attention channels g (N, d), visual bias v (N, d), global bias
    items    a bias residual per item seen in the log (items first seen later keep 0), and with the
             hybrid extension (collab_dim = k > 0) a collaborative factor q (k,) per item
    users    offsets per user (UserTables: embedding tables 1 and 2 of claims 6 and 7)
with L2 on the offsets (the pull toward the prior that lets a user with few events borrow from the
mean user) and on the item residuals and factors.

Objectives (ModelConfig.objective): "pointwise", the faithful model's, is weighted BCE over every
event, each positive event also teaching against uniformly sampled items (label 0); "pairwise"
(BPR, the hybrid extension's) ranks each engaged item above uniformly sampled ones, weighted by the
event's label x weight, and learns nothing from skips, dislikes and impressions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from mmrec.catalogue import Catalogue
from mmrec.feedback import FeedbackWeights
from mmrec.interaction_log import InteractionLog
from mmrec.model import ModelConfig, ParamLayout, SharedParams, UserTables, pair_scores, score


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 512
    learning_rate: float = 0.01
    user_l2: float = 1e-3  # on a user's offsets (the patent model's parameters), per example
    collab_l2: float = 1e-2  # on a user's collaborative factor (hybrid extension), per example
    item_l2: float = 1e-4  # on an item's bias residual, per example
    factor_l2: float = 1e-4  # on an item's collaborative factors (hybrid extension), per example
    negatives: int = 4  # sampled items per positive event
    seed: int = 0


class PatentModel(nn.Module):
    """Everything `mmrec train` fits, for users and items indexed as in the log."""

    def __init__(self, cfg: ModelConfig, num_users: int, num_items: int, shared: SharedParams | None = None) -> None:
        super().__init__()
        init = shared or SharedParams.initial(cfg)
        self.cfg = cfg
        self.layout = ParamLayout(cfg)
        self.prior = nn.Parameter(init.prior.clone())
        self.attention_channels = nn.Parameter(init.attention_channels.clone())
        self.visual_bias = nn.Parameter(init.visual_bias.clone())
        self.global_bias = nn.Parameter(init.global_bias.clone())
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        # Small random item factors: with zero user offsets the user factors then get a gradient.
        init_gen = torch.Generator().manual_seed(0)
        self.item_factors = nn.Parameter(torch.randn(num_items, cfg.collab_dim, generator=init_gen) * 0.01)
        self.users = UserTables(cfg, num_users)

    def shared(self) -> SharedParams:
        """The shared parameters as plain tensors (detached copies)."""
        return SharedParams(
            prior=self.prior.detach().clone(),
            attention_channels=self.attention_channels.detach().clone(),
            visual_bias=self.visual_bias.detach().clone(),
            global_bias=self.global_bias.detach().clone(),
        )

    def _shared_live(self) -> SharedParams:
        return SharedParams(self.prior, self.attention_channels, self.visual_bias, self.global_bias)

    def pair_logits(self, users: Tensor, items: Tensor, catalogue: Catalogue) -> Tensor:
        """users (B,), items (B,) catalogue rows -> (B,) scores, differentiable in every parameter."""
        params = self.layout.split(self.prior + self.users(users))
        return pair_scores(
            params, catalogue.float_maps(items), self.item_bias[items], self._shared_live(), self.cfg, self.item_factors[items]
        )

    @torch.no_grad()
    def scores(self, users: Tensor, items: Tensor, catalogue: Catalogue, chunk: int = 1024) -> Tensor:
        """users (U,), items (I,) catalogue rows -> (U, I)."""
        params = self.layout.split(self.prior + self.users(users))
        shared = self._shared_live()
        parts = []
        for s in range(0, len(items), chunk):
            rows = items[s : s + chunk]
            parts.append(score(params, catalogue.float_maps(rows), self.item_bias[rows], shared, self.cfg, self.item_factors[rows]))
        return torch.cat(parts, dim=1)


def training_examples(log: InteractionLog, negatives: int, weights: FeedbackWeights, gen: torch.Generator) -> tuple[Tensor, ...]:
    """The log's events plus `negatives` items sampled uniformly from the items the log has seen
    (label 0) per positive event: items that only appear later must not be taught as negatives.

    Returns users (E',), items (E',), labels (E',), weights (E',).
    """
    users = torch.from_numpy(log.user)
    items = torch.from_numpy(log.item)
    labels = torch.from_numpy(log.label).float()
    example_weights = torch.from_numpy(log.weight).float()
    positive = torch.from_numpy(log.positive)
    if negatives > 0 and positive.any():
        pos_users = users[positive].repeat_interleave(negatives)
        candidates = torch.from_numpy(np.flatnonzero(seen_items(log)))
        sampled = candidates[torch.randint(0, len(candidates), (len(pos_users),), generator=gen)]
        users = torch.cat([users, pos_users])
        items = torch.cat([items, sampled])
        labels = torch.cat([labels, torch.zeros(len(pos_users))])
        example_weights = torch.cat([example_weights, torch.full((len(pos_users),), weights.sampled_negative)])
    return users, items, labels, example_weights


def pairwise_examples(log: InteractionLog, negatives: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The pairwise objective's examples: every event with label x weight > 0, against `negatives`
    items sampled uniformly from the items the log has seen.

    Returns users (E,), items (E,), sampled items (E, negatives), weights (E,) = label x weight.
    """
    weight = torch.from_numpy(log.label).float() * torch.from_numpy(log.weight).float()
    keep = weight > 0
    users, items = torch.from_numpy(log.user)[keep], torch.from_numpy(log.item)[keep]
    candidates = torch.from_numpy(np.flatnonzero(seen_items(log)))
    sampled = candidates[torch.randint(0, len(candidates), (len(users), negatives), generator=gen)]
    return users, items, sampled, weight[keep]


def fit(model: PatentModel, log: InteractionLog, catalogue: Catalogue, config: TrainConfig, progress: bool = True) -> list[float]:
    """Train in place on `log` (item indices are catalogue rows); returns the mean loss per epoch."""
    gen = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    weights = FeedbackWeights()
    pairwise = model.cfg.objective == "pairwise"
    if pairwise and config.negatives < 1:
        raise ValueError("the pairwise objective needs negatives >= 1")
    history = []
    for epoch in range(config.epochs):
        if pairwise:
            users, items, sampled, example_weights = pairwise_examples(log, config.negatives, gen)
        else:
            users, items, labels, example_weights = training_examples(log, config.negatives, weights, gen)
        order = torch.randperm(len(users), generator=gen)
        total, seen = 0.0, 0
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False):
            index = order[start : start + config.batch_size]
            u, i, w = users[index], items[index], example_weights[index]
            if pairwise:
                j = sampled[index]  # (B, K)
                k = j.shape[1]
                logits = model.pair_logits(torch.cat([u, u.repeat_interleave(k)]), torch.cat([i, j.reshape(-1)]), catalogue)
                margins = logits[len(u) :].view(-1, k) - logits[: len(u), None]  # (B, K)
                data = (F.softplus(margins).mean(dim=1) * w).sum() / w.sum()
                touched = torch.cat([i, j.reshape(-1)])
            else:
                logits = model.pair_logits(u, i, catalogue)
                data = (F.binary_cross_entropy_with_logits(logits, labels[index], reduction="none") * w).sum() / w.sum()
                touched = i
            squares = model.users(u).square()
            collab = model.layout.slices["collab"]
            penalty = config.user_l2 * (squares.sum(dim=1) - squares[:, collab].sum(dim=1)).mean()
            penalty = penalty + config.item_l2 * model.item_bias[touched].square().mean()
            if model.cfg.collab_dim:
                penalty = penalty + config.collab_l2 * squares[:, collab].sum(dim=1).mean()
                penalty = penalty + config.factor_l2 * model.item_factors[touched].square().sum(dim=1).mean()
            loss = data + penalty
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(data.detach()) * len(index)
            seen += len(index)
        history.append(total / max(seen, 1))
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]:.4f}")
    return history


def seen_items(log: InteractionLog) -> np.ndarray:
    """(I,) bool: items with at least one event in the log."""
    seen = np.zeros(log.num_items, dtype=bool)
    seen[log.item] = True
    return seen
