"""Offline training (`mmrec train`): the shared parts and every user's offsets from an interaction log.

Fits, on the same loss as the online step, by Adam over shuffled minibatches of events:
    shared   prior (P,), attention channels g (N, d), visual bias v (N, d), global bias
    items    a bias residual per item seen in the log (items first seen later keep 0), and with the
             hybrid extension (collab_dim = k > 0) a collaborative factor q (k,) per item
    users    offsets per user (UserTables: embedding tables 1 and 2 of claims 6 and 7)
with L2 on the offsets (the pull toward the prior that lets a user with few events borrow from the
mean user) and on the item residuals and factors.

Item memory first (hybrid extension, `memory_epochs` > 0): the item memory (global bias, item bias
residuals b_x, user and item factors p, q) is first fitted alone, as a matrix factorisation on
the same loss, then everything is fitted together from there. Fitted together from the start, the
visual part, which every example moves, explains most training engagements before the sparsely
updated item factors learn (docs/visual-taste.md, "Closing the gap to VBPR").

Modality dropout (hybrid extension, `modality_dropout` = rho): in the joint epochs, a fraction rho
of the examples leaves the item memory (b_x + p . q) out of the score and another rho its visual
part, so that each part also learns to rank alone; the score served is always the sum.

Objectives (ModelConfig.objective): "pointwise", the faithful model's, is weighted BCE over every
event, each positive event also teaching against uniformly sampled items (label 0); "pairwise"
(BPR, the hybrid extension's) ranks each engaged item above uniformly sampled ones, weighted by the
event's label x weight, and learns nothing from skips, dislikes and impressions.
"""
from __future__ import annotations

from collections.abc import Callable
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
    memory_epochs: int = 0  # epochs of the item memory alone before the joint ones (hybrid extension)
    modality_dropout: float = 0.0  # rho of the module docstring (hybrid extension), in [0, 0.5]
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.modality_dropout <= 0.5:
            raise ValueError(f"modality_dropout must be in [0, 0.5], got {self.modality_dropout}")
        if self.memory_epochs < 0:
            raise ValueError(f"memory_epochs must be >= 0, got {self.memory_epochs}")

    def check_model(self, cfg: ModelConfig) -> None:
        """Raises ValueError when these options do not fit the model they would train."""
        if cfg.objective == "pairwise" and self.negatives < 1:
            raise ValueError("the pairwise objective needs negatives >= 1")
        if (self.memory_epochs or self.modality_dropout) and not cfg.collab_dim:
            raise ValueError("memory_epochs and modality_dropout need the hybrid extension's item memory (collab_dim > 0)")


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

    def memory_logits(self, users: Tensor, items: Tensor, catalogue: Catalogue) -> Tensor:
        """The item memory's part of pair_logits, (B,): global bias + b_x + p_u . q_x (catalogue unused)."""
        collab = self.layout.slices["collab"]
        p = self.prior[collab] + self.users(users)[:, collab]
        return self.global_bias + self.item_bias[items] + (p * self.item_factors[items]).sum(dim=1)

    def pair_parts(self, users: Tensor, items: Tensor, catalogue: Catalogue) -> tuple[Tensor, Tensor]:
        """pair_logits as two (B,) parts that sum to it: (visual, memory), memory = b_x + p_u . q_x
        (what an item never seen in training lacks)."""
        memory = self.memory_logits(users, items, catalogue) - self.global_bias
        return self.pair_logits(users, items, catalogue) - memory, memory

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
    """Train in place on `log` (item indices are catalogue rows); returns the mean loss per epoch,
    the item memory's stage first (config.memory_epochs, module docstring)."""
    config.check_model(model.cfg)
    history = _fit_stage(model, model.memory_logits, log, catalogue, config, config.memory_epochs, 0.0, "memory epoch", progress)
    return history + _fit_stage(model, model.pair_logits, log, catalogue, config, config.epochs, config.modality_dropout, "epoch", progress)


Logits = Callable[[Tensor, Tensor, Catalogue], Tensor]


def _fit_stage(
    model: PatentModel,
    logits_of: Logits,
    log: InteractionLog,
    catalogue: Catalogue,
    config: TrainConfig,
    epochs: int,
    dropout: float,
    label: str,
    progress: bool,
) -> list[float]:
    """`epochs` epochs of Adam on the loss with these logits (modality dropout rate `dropout`), from a
    fresh optimiser and generator."""
    if not epochs:
        return []
    gen = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    weights = FeedbackWeights()
    pairwise = model.cfg.objective == "pairwise"
    history = []
    for epoch in range(epochs):
        if pairwise:
            users, items, sampled, example_weights = pairwise_examples(log, config.negatives, gen)
        else:
            users, items, labels, example_weights = training_examples(log, config.negatives, weights, gen)
        order = torch.randperm(len(users), generator=gen)
        total, seen = 0.0, 0
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"{label} {epoch + 1}/{epochs}", disable=not progress, leave=False):
            index = order[start : start + config.batch_size]
            u, i, w = users[index], items[index], example_weights[index]
            if pairwise:
                j = sampled[index]  # (B, K)
                k = j.shape[1]
                keep = _modality_masks(len(u), dropout, gen)
                if keep is not None:  # an engagement and its sampled items share their example's masks
                    keep = (_with_sampled(keep[0], k), _with_sampled(keep[1], k))
                logits = _logits(model, logits_of, _with_sampled(u, k), torch.cat([i, j.reshape(-1)]), catalogue, keep)
                margins = logits[len(u) :].view(-1, k) - logits[: len(u), None]  # (B, K)
                data = (F.softplus(margins).mean(dim=1) * w).sum() / w.sum()
                touched = torch.cat([i, j.reshape(-1)])
            else:
                logits = _logits(model, logits_of, u, i, catalogue, _modality_masks(len(u), dropout, gen))
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
            tqdm.write(f"{label} {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
    return history


def _with_sampled(per_example: Tensor, k: int) -> Tensor:
    """(B,) -> (B + B k,): each example's value for its engagement, then for its k sampled items."""
    return torch.cat([per_example, per_example.repeat_interleave(k)])


def _modality_masks(count: int, rate: float, gen: torch.Generator) -> tuple[Tensor, Tensor] | None:
    """Per example (count,) float masks (keep visual, keep memory), None when rate is 0: a fraction
    `rate` drops the visual part, another `rate` the memory, the rest keeps both."""
    if not rate:
        return None
    draw = torch.rand(count, generator=gen)
    return (draw >= rate).float(), (draw < 1.0 - rate).float()


def _logits(model: PatentModel, logits_of: Logits, users: Tensor, items: Tensor, catalogue: Catalogue, keep: tuple[Tensor, Tensor] | None) -> Tensor:
    """(B,) training logits: logits_of's, or with keep = (visual, memory) masks the masked sum of pair_parts."""
    if keep is None:
        return logits_of(users, items, catalogue)
    visual, memory = model.pair_parts(users, items, catalogue)
    return visual * keep[0] + memory * keep[1]


def seen_items(log: InteractionLog) -> np.ndarray:
    """(I,) bool: items with at least one event in the log."""
    seen = np.zeros(log.num_items, dtype=bool)
    seen[log.item] = True
    return seen
