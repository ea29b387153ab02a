"""The online learning step: one Adagrad-scaled SGD update of one user's offsets per event.

Only the user's own parameters move; the shared prior, channel reductions and biases are frozen.
Loss for a user with offsets delta over the event's examples (the engaged item, sampled
negatives, ...):
    L(delta) = sum_k w_k * BCE(score_k, y_k) / sum_k w_k + l2 / 2 * ||delta||^2

The step's gradient is computed in closed form (`loss_and_grad`): one user against a handful of
items is far too small for autograd's graph to pay off (building and walking it cost more than the
arithmetic). Shapes below: B examples, per layer j maps F (B, d, H, W), pooled grid (h, w), kernel
width m, n = H W.

    forward (spanning)                            backward (g = dL/dscore, (B,))
    Y = c . F                (B, n)    F (*) (c outer K) = (c . F) (*) K
    X = unfold(Y)            (B, m^2, n)
    A = K . X                (B, n)
    P, idx = maxpool(A)      (B, hw)             dP = g r_j w;  dA = scatter(dP at idx)
                                                 dK = sum_b X dA;  dY = fold(K dA);  dc = sum_b F . dY
    Z = unfold(avgpool(g_j . F))  (B, m^2, hw)
    V = Q . Z;  w = softmax(V)                   dV = g r_j w (P - o);  dQ = sum_b Z dV
    o = sum w P              (B,)                dr_j = sum_b g o
    score = biases + sum_j r_j o_j               dbias = sum_b g
          (+ p . q_b, hybrid extension)          dp = sum_b g q_b
(per_channel unfolds every channel, A = max over channels of K . X_c, and dA goes to the winners.)

Objectives (cfg.objective): "pointwise" is the weighted BCE above, "pairwise" (the hybrid
extension's BPR loss) ranks the event's item (row 0, label y, weight w) above each of the K sampled
items: L = y w / K * sum_k softplus(score_k - score_0), so dL/dscore_k = y w / K * sigmoid(score_k -
score_0) and dL/dscore_0 = -sum_k of those. An event without signal there (y = 0: a skip, a
dislike, an impression; or no sampled items) leaves the offsets as they are.

It equals autograd's gradient of `loss` (tests/test_online_grad.py, float64 to 1e-10, several
configurations), including its tie rules: max pooling sends the gradient to the first maximum of a
window (the index max_pool2d returns), and the per_channel max over channels splits it evenly
between equal channels, as amax's backward does.
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

    maps         N x (I, d, H_j, W_j) float32
    item_bias    (I,)  learned per-item residual bias
    labels       (I,)  in [0, 1]; row 0 is the event's item, the rows after it sampled items
    weights      (I,)  > 0
    item_factors (I, k) collaborative factors (hybrid extension; None when k = 0)
    """

    maps: list[Tensor]
    item_bias: Tensor
    labels: Tensor
    weights: Tensor
    item_factors: Tensor | None = None

    def pairwise_signal(self) -> bool:
        """Whether the pairwise objective learns anything from these examples."""
        return len(self.labels) > 1 and float(self.labels[0] * self.weights[0]) > 0


def objective_loss(logits: Tensor, labels: Tensor, weights: Tensor, objective: str) -> tuple[Tensor, Tensor]:
    """The data term of the loss over the examples' scores (B,) and its gradient dL/dscore (B,)
    (module docstring: pointwise BCE or the pairwise loss of row 0 against the others)."""
    if objective == "pointwise":
        total = weights.sum()
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum() / total
        return loss, (torch.sigmoid(logits) - labels) * weights / total
    others = len(logits) - 1
    if others < 1:
        return logits.new_zeros(()), torch.zeros_like(logits)
    scale = labels[0] * weights[0] / others
    margins = logits[1:] - logits[0]
    loss = scale * F.softplus(margins).sum()
    pulls = scale * torch.sigmoid(margins)
    return loss, torch.cat([-pulls.sum()[None], pulls])


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
        """Scalar loss of offsets (P,) on the examples (see module docstring); differentiable
        (autograd), the definition `loss_and_grad` is tested against."""
        params = self.layout.split((self.shared.prior + offsets)[None])
        logits = score(params, examples.maps, examples.item_bias, self.shared, self.cfg, examples.item_factors)[0]
        if self.cfg.objective == "pointwise":
            data = (F.binary_cross_entropy_with_logits(logits, examples.labels, reduction="none") * examples.weights).sum()
            data = data / examples.weights.sum()
        else:
            others = len(logits) - 1
            data = examples.labels[0] * examples.weights[0] / max(others, 1) * F.softplus(logits[1:] - logits[0]).sum()
        return data + 0.5 * self.online.l2 * offsets.square().sum()

    @torch.no_grad()
    def loss_and_grad(self, offsets: Tensor, examples: Examples) -> tuple[Tensor, Tensor]:
        """The loss of offsets (P,) on the examples and its gradient (P,), in closed form."""
        cfg, layout, shared = self.cfg, self.layout, self.shared
        n_layers, m, p = cfg.n_layers, cfg.kernel_size, cfg.pool
        if len(examples.maps) != n_layers:
            raise ValueError(f"expected {n_layers} layers of maps, got {len(examples.maps)}")
        pad = m // 2
        theta = shared.prior + offsets
        interest = theta[layout.slices["interest"]].view(n_layers, m * m)
        channel = theta[layout.slices["channel"]].view(n_layers, cfg.channel_factor_size)
        attention = theta[layout.slices["attention"]].view(n_layers, m * m)
        fusion = theta[layout.slices["fusion"]]
        collab = theta[layout.slices["collab"]]
        spanning = cfg.readout == "spanning"

        logits = shared.global_bias + theta[layout.slices["bias"]] + examples.item_bias
        if cfg.collab_dim:
            if examples.item_factors is None:
                raise ValueError(f"collab_dim={cfg.collab_dim} needs the examples' item factors")
            logits = logits + examples.item_factors @ collab
        saved = []
        for j, maps in enumerate(examples.maps):
            b, d, h, w = maps.shape
            flat = maps.view(b, d, h * w)
            if spanning:  # F (*) (c outer K) = (c . F) (*) K: unfold one plane, not d
                planes = torch.matmul(torch.stack([channel[j], shared.attention_channels[j]]), flat)  # (B, 2, n)
                patches = F.unfold(planes[:, :1].reshape(b, 1, h, w), m, padding=pad)  # (B, m^2, n)
                first = torch.matmul(interest[j], patches).view(b, 1, h, w)
                reduced = planes[:, 1].reshape(b, 1, h, w)
                winners = None
            else:
                patches = F.unfold(maps.reshape(b * d, 1, h, w), m, padding=pad)  # (B d, m^2, n)
                per_channel = torch.matmul(interest[j], patches).view(b, d, h * w)
                best = per_channel.amax(dim=1, keepdim=True)  # (B, 1, n)
                winners = per_channel == best
                first = best.view(b, 1, h, w)
                reduced = torch.matmul(shared.attention_channels[j], flat).view(b, 1, h, w)
            pooled, where = F.max_pool2d(first, p, p, ceil_mode=True, return_indices=True)  # (B, 1, h', w')
            coarse = F.unfold(F.avg_pool2d(reduced, p, p, ceil_mode=True), m, padding=pad)  # (B, m^2, h'w')
            second = torch.matmul(attention[j].view(1, 1, -1), coarse).view(b, -1)
            weights = torch.softmax(second, dim=-1)  # (B, h'w')
            pooled = pooled.view(b, -1)
            o = (weights * pooled).sum(dim=1)  # (B,)
            logits = logits + fusion[j] * o + maps.mean(dim=(2, 3)) @ shared.visual_bias[j]
            saved.append((maps, patches, winners, where.view(b, -1), coarse, weights, pooled, o))

        data, g = objective_loss(logits, examples.labels, examples.weights, cfg.objective)  # g = dL/dscore (B,)
        loss = data + 0.5 * self.online.l2 * offsets.square().sum()
        grad_interest = torch.empty(n_layers, m * m, dtype=theta.dtype)
        grad_channel = torch.empty(n_layers, cfg.channel_factor_size, dtype=theta.dtype)
        grad_attention = torch.empty(n_layers, m * m, dtype=theta.dtype)
        grad_fusion = torch.empty(n_layers, dtype=theta.dtype)
        for j, (maps, patches, winners, where, coarse, weights, pooled, o) in enumerate(saved):
            b, d, h, w = maps.shape
            grad_fusion[j] = g @ o
            e = (g * fusion[j])[:, None]  # dL/do (B, 1)
            grad_pooled = e * weights  # (B, h'w')
            grad_second = grad_pooled * (pooled - o[:, None])  # softmax backward
            grad_attention[j] = torch.einsum("bkn,bn->k", coarse, grad_second)
            grad_first = torch.zeros(b, h * w, dtype=theta.dtype).scatter_add_(1, where, grad_pooled)  # (B, n)
            if spanning:
                grad_interest[j] = torch.einsum("bkn,bn->k", patches, grad_first)
                # dL/d(c . F): the adjoint of the K convolution, then the channel reduction's adjoint
                grad_plane = F.fold(interest[j][None, :, None] * grad_first[:, None, :], (h, w), m, padding=pad)
                grad_channel[j] = torch.einsum("bcn,bn->c", maps.view(b, d, h * w), grad_plane.view(b, h * w))
            else:
                n = h * w
                share = winners / winners.sum(dim=1, keepdim=True)  # amax's even split between ties
                grad_per_channel = (share * grad_first[:, None, :]).view(b * d, n)
                grad_interest[j] = torch.einsum("bkn,bn->k", patches, grad_per_channel)
        grad = layout.join(
            interest=grad_interest[None],
            channel=grad_channel[None],
            attention=grad_attention[None],
            fusion=grad_fusion[None],
            bias=g.sum()[None],
            collab=(g @ examples.item_factors)[None] if cfg.collab_dim else theta.new_zeros(1, 0),
        )[0]
        return loss, grad + self.online.l2 * offsets

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
        offsets = state.offsets.detach()
        if self.cfg.objective == "pairwise" and not examples.pairwise_signal():
            loss, new_offsets, accum = torch.zeros(()), offsets, state.accum  # recorded, nothing to learn
        else:
            loss, grad = self.loss_and_grad(offsets, examples)
            accum = state.accum + grad.square()
            new_offsets = offsets - self.online.learning_rate * grad / (accum.sqrt() + self.online.epsilon)
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
        return StepResult(state=new_state, loss=float(loss), applied=True)
