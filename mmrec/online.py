"""The online learning step: one Adagrad-scaled SGD update of one user's offsets per event.

Only the user's own parameters move; the shared prior, channel reductions and biases are frozen.
Loss for a user with offsets delta over the event's examples (the engaged item, sampled
negatives, ...):
    L(delta) = sum_k w_k * BCE(score_k, y_k) / sum_k w_k + l2 / 2 * ||delta||^2
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.model import ModelConfig, ParamLayout, SharedParams, score
from mmrec.user_state import UserState


@dataclass(frozen=True)
class OnlineConfig:
    learning_rate: float = 0.1
    l2: float = 1e-3  # pull of each step toward the prior (offsets toward zero)
    epsilon: float = 1e-6  # Adagrad's floor on the accumulated squared gradient
    recent_events: int = 16  # event-id hashes kept per user for duplicate detection
    seen_media: int = 32  # media a user engaged with, kept to leave them out of recommendations


@dataclass(frozen=True)
class Examples:
    """The items one event teaches about, with their targets.

    maps      N x (I, d, H_j, W_j) float32
    item_bias (I,)  learned per-item residual bias
    labels    (I,)  in [0, 1]
    weights   (I,)  > 0
    """

    maps: list[Tensor]
    item_bias: Tensor
    labels: Tensor
    weights: Tensor


@dataclass(frozen=True)
class StepResult:
    state: UserState
    loss: float  # the event's loss before the update
    applied: bool  # False when the event was a duplicate and nothing changed


class OnlineLearner:
    """Applies events to user states; deterministic for the same inputs."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams, online: OnlineConfig) -> None:
        self.cfg = cfg
        self.shared = shared
        self.online = online
        self.layout = ParamLayout(cfg)

    def loss(self, offsets: Tensor, examples: Examples) -> Tensor:
        """Scalar loss of offsets (P,) on the examples (see module docstring)."""
        params = self.layout.split((self.shared.prior + offsets)[None])
        logits = score(params, examples.maps, examples.item_bias, self.shared, self.cfg)[0]
        data = (F.binary_cross_entropy_with_logits(logits, examples.labels, reduction="none") * examples.weights).sum()
        return data / examples.weights.sum() + 0.5 * self.online.l2 * offsets.square().sum()

    def step(
        self,
        state: UserState,
        examples: Examples,
        event_id: str,
        partition: int = -1,
        position: int = -1,
        now: float = 0.0,
        engaged_media: str | None = None,
    ) -> StepResult:
        """One update from one event; a duplicate (same id or an already applied position) is a no-op.

        engaged_media: the event's media when the user engaged with it (not a mere impression).
        """
        if state.has_applied(event_id, partition, position):
            return StepResult(state=state, loss=float("nan"), applied=False)
        offsets = state.offsets.detach().clone().requires_grad_(True)
        loss = self.loss(offsets, examples)
        (grad,) = torch.autograd.grad(loss, offsets)
        accum = state.accum + grad.square()
        new_offsets = offsets.detach() - self.online.learning_rate * grad / (accum.sqrt() + self.online.epsilon)
        new_state = replace(
            state,
            offsets=new_offsets,
            accum=accum,
            version=state.version + 1,
            partition=partition if partition >= 0 else state.partition,
            position=position if partition >= 0 else state.position,
            updated_at=now,
            recent=state.remember_event(event_id, self.online.recent_events),
            seen=state.seen if engaged_media is None else state.remember_media(engaged_media, self.online.seen_media),
        )
        return StepResult(state=new_state, loss=float(loss.detach()), applied=True)
