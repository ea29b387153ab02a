"""The online learning step: one Adagrad-scaled SGD update of one user's offsets per event.

Only the user's own parameters move; the shared prior, channel reductions and biases are frozen.
Loss for a user with offsets delta over the event's examples (the engaged item, sampled
negatives, ...):
    L(delta) = sum_k w_k * BCE(score_k, y_k) / sum_k w_k + l2 / 2 * ||delta||^2

The step's gradient is computed in closed form (`loss_and_grad`): one user against a handful of
items is far too small for autograd's graph to pay off (building and walking it cost more than the
arithmetic), and even the closed form's time is mostly the fixed cost of each torch op, so all N
layers run as one batch: every layer's maps sit top-left in one zero frame (`_Frame`: the largest
grid plus m//2 zero rows and columns, in whole pooling windows). Planes are laid out flat, so a
kernel's 'same' neighbourhoods are m^2 shifted copies of them (shifts: `_shifted`, the zero margins the
padding). A layer's outputs outside its own grid are masked out of the max pool and its pooled
positions out of the softmax; the mean pool's windows that its edge clips (ceil mode) are rescaled.
Shapes below: B examples, N layers, frame (H, W) with pooled frame (h, w), kernel width m, per layer
j channel factor c_j, kernels K_j and Q_j, attention channels g_j, fusion weight r_j.

    forward (spanning)                                backward (g = dL/dscore, (B,))
    F = the frame of the maps  (N, d, B H W)          F (*) (c outer K) = (c . F) (*) K
    Y = c . F                  (N, B H W)
    X = shifts(Y)              (N, m^2, B H W)
    A = K . X, masked          (N, B H W)
    P, idx = maxpool(A)        (N, B, h w)            dP = g r w;  dA = scatter(dP at idx)
                                                      dK = X . dA;  dY = flip(K) . shifts(dA) (the
                                                      convolution's adjoint);  dc = F . dY
    Z = shifts(avgpool(g . F) rescaled)  (N, m^2, B h w)
    V = Q . Z, masked;  w = softmax(V)                dV = g r w (P - o);  dQ = Z . dV
    o = sum w P                (N, B)                 dr = o . g
    score = biases + r . o + visual bias              dbias = sum_b g
          (+ p . q_b, hybrid extension)               dp = sum_b g q_b
(per_channel shifts every channel's planes, A = max over channels of K . X_c, and dA goes to the
winners.)

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
from typing import NamedTuple

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


class _Blocks(NamedTuple):
    """Views of one flat (P,) vector as ParamLayout's blocks: interest and attention (N, m^2), channel (N, d')."""

    interest: Tensor
    channel: Tensor
    attention: Tensor
    fusion: Tensor
    bias: Tensor
    collab: Tensor


def _contract(matrices: Tensor, vectors: Tensor, out: Tensor) -> None:
    """out (N, R) = matrices (N, R, L) @ vectors (N, L), batched. The vectors go in as transposed
    rows: bmm takes a slow path (~8x here) for a contiguous (N, L, 1) operand."""
    torch.bmm(matrices, vectors.reshape(len(vectors), 1, -1).transpose(1, 2), out=out.view(len(out), -1, 1))


def _shifted(planes: Tensor, m: int, row: int) -> Tensor:
    """(N, L) planes laid out flat, rows of `row` values -> (N, m^2, L): the planes shifted by each
    kernel offset (u - m//2 rows, v - m//2 columns; unfold's order), zeros beyond either end.

    On planes whose data sits top-left with at least m//2 zero rows and columns after it, this is
    unfold's zero-padded 'same' neighbourhood of every position (a shift past a row's or plane's
    edge lands in those zeros); one copy of a strided view.
    """
    n, length = planes.shape
    pad = m // 2
    slack = pad * row + pad
    padded = F.pad(planes, (slack, slack))
    return padded.as_strided((n, m, m, length), (length + 2 * slack, row, 1, 1)).reshape(n, m * m, length)


@dataclass(frozen=True)
class _Frame:
    """The frame that every layer's maps are embedded in, top-left in zeros, to run the N layers as
    one batch: constants for one list of grids (H_j, W_j), a kernel width m, a pool p and a dtype.

    (H, W): the largest grid plus m//2 zero rows and columns, rounded up to whole pooling windows,
    so that every layer's grid and pooled grid has the zero margin `_shifted` needs; (h, w) = (H/p, W/p).
    inverse_size  (N,)           1 / (H_j W_j), for the spatial means
    outside       (N, 1, H, W)   True outside layer j's grid (its conv outputs there are masked)
    pool_scale    (N, 1, h, w)   frame window size / layer window size (ceil mode clips the layer's
                                 windows at its edge), 0 outside; None when no window is clipped
    pool_outside  (N, 1, h w)    -inf outside layer j's pooled grid, 0 inside
    """

    height: int
    width: int
    inverse_size: Tensor
    outside: Tensor
    pool_scale: Tensor | None
    pool_outside: Tensor

    @classmethod
    def of(cls, grids: list[tuple[int, int]], m: int, p: int, dtype: torch.dtype) -> _Frame:
        height = p * (-(-max(h for h, _ in grids) // p) + m // 2)
        width = p * (-(-max(w for _, w in grids) // p) + m // 2)
        inside = torch.zeros(len(grids), 1, height, width, dtype=dtype)
        for j, (h, w) in enumerate(grids):
            inside[j, :, :h, :w] = 1
        counts = F.avg_pool2d(inside, p, p).mul(p * p).round()  # each pooling window's pixels in layer j
        clipped = bool(((counts > 0) & (counts < p * p)).any())
        return cls(
            height,
            width,
            torch.tensor([1.0 / (h * w) for h, w in grids], dtype=dtype),
            inside == 0,
            torch.where(counts > 0, p * p / counts, 0) if clipped else None,
            torch.where(counts > 0, 0, -torch.inf).flatten(2),
        )

    def embed(self, maps: list[Tensor]) -> Tensor:
        """N x (B, d, H_j, W_j) -> (N, d, B, H, W), each layer top-left in zeros."""
        b, d = maps[0].shape[:2]
        framed = maps[0].new_zeros(len(maps), d, b, self.height, self.width)
        for j, x in enumerate(maps):
            framed[j, :, :, : x.shape[2], : x.shape[3]] = x.transpose(0, 1)
        return framed

    def forward(self, maps: list[Tensor], coeff: Tensor, params: _Blocks, cfg: ModelConfig) -> tuple[Tensor, tuple]:
        """The layers' share of the logits (B,) and what `backward` needs; coeff (N, R, d) holds each
        layer's channel reductions [c (spanning only), g, visual bias]."""
        h, w, m, p = self.height, self.width, cfg.kernel_size, cfg.pool
        n_layers, (b, d) = len(maps), maps[0].shape[:2]
        framed = self.embed(maps)
        flat = framed.view(n_layers, d, -1)  # (N, d, B H W)
        planes = torch.bmm(coeff, flat)  # (N, R, B H W)
        interest = params.interest.view(n_layers, 1, -1)
        if cfg.readout == "spanning":  # F (*) (c outer K) = (c . F) (*) K: one plane per item, not d
            patches = _shifted(planes[:, 0], m, w)  # (N, m^2, B H W)
            first = torch.bmm(interest, patches).view(n_layers, b, h, w)
            winners = None
        else:
            patches = _shifted(flat.view(n_layers, -1), m, w)  # (N, m^2, d B H W)
            per_channel = torch.bmm(interest, patches).view(n_layers, d, b, h * w)
            best = per_channel.amax(dim=1)  # (N, B, H W)
            winners = per_channel == best[:, None]
            first = best.view(n_layers, b, h, w)
        first = first.masked_fill(self.outside, torch.finfo(first.dtype).min)  # never a window's max
        pooled, where = F.max_pool2d(first, p, p, return_indices=True)  # (N, B, h, w)
        coarse = F.avg_pool2d(planes[:, -2].view(n_layers, b, h, w), p, p)
        if self.pool_scale is not None:
            coarse = coarse * self.pool_scale
        coarse = _shifted(coarse.view(n_layers, -1), m, w // p)  # (N, m^2, B h w)
        second = torch.bmm(params.attention.view(n_layers, 1, -1), coarse).view(n_layers, b, -1)
        weights = torch.softmax(second + self.pool_outside, dim=-1)  # (N, B, h w)
        pooled = pooled.view(n_layers, b, -1)
        o = (weights * pooled).sum(dim=2)  # (N, B)
        visual = planes[:, -1].view(n_layers, b, -1).sum(dim=2)  # (N, B)
        part = params.fusion @ o + self.inverse_size @ visual
        return part, (flat, patches, winners, where.view(n_layers, b, -1), coarse, weights, pooled, o)

    def backward(self, saved: tuple, g: Tensor, params: _Blocks, grads: _Blocks, cfg: ModelConfig) -> None:
        """Writes the gradient's interest, channel, attention and fusion blocks into grads, given g = dL/dscore (B,)."""
        flat, patches, winners, where, coarse, weights, pooled, o = saved
        n_layers, b = o.shape
        torch.mv(o, g, out=grads.fusion)
        grad_pooled = weights * (params.fusion[:, None] * g)[:, :, None]  # dP = g r_j w (N, B, h w)
        grad_second = grad_pooled * (pooled - o[:, :, None])  # softmax backward
        _contract(coarse, grad_second, out=grads.attention)
        grad_first = torch.zeros(n_layers, b, self.height * self.width, dtype=g.dtype)
        grad_first.scatter_add_(2, where, grad_pooled)  # (N, B, H W)
        if winners is None:
            _contract(patches, grad_first, out=grads.interest)
            # dL/d(c . F): the K convolution's adjoint (the flipped kernel), then the channel reduction's
            flipped = params.interest.flip(-1).view(n_layers, 1, -1)
            grad_plane = torch.bmm(flipped, _shifted(grad_first.view(n_layers, -1), cfg.kernel_size, self.width))
            _contract(flat, grad_plane, out=grads.channel)
        else:
            share = winners.to(g.dtype)
            share = share / share.sum(dim=1, keepdim=True)  # amax's even split between ties
            _contract(patches, share * grad_first[:, None], out=grads.interest)


class OnlineLearner:
    """Applies events to user states; deterministic for the same inputs."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams, online: OnlineConfig) -> None:
        self.cfg = cfg
        self.shared = shared
        self.online = online
        self.layout = ParamLayout(cfg)
        self._sizes = [sl.stop - sl.start for sl in self.layout.slices.values()]
        self._frames: dict[tuple, _Frame] = {}

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

    @torch.inference_mode()
    def loss_and_grad(self, offsets: Tensor, examples: Examples) -> tuple[Tensor, Tensor]:
        """The loss of offsets (P,) on the examples and its gradient (P,), in closed form.

        Both are inference tensors (inference mode saves ~15% of the step's dispatch overhead): read
        them or compute from them, but do not modify them in place outside inference mode.
        """
        cfg, shared = self.cfg, self.shared
        if len(examples.maps) != cfg.n_layers:
            raise ValueError(f"expected {cfg.n_layers} layers of maps, got {len(examples.maps)}")
        theta = shared.prior + offsets
        grad = torch.empty_like(theta)
        params, grads = self._blocks(theta), self._blocks(grad)
        logits = shared.global_bias + params.bias + examples.item_bias
        if cfg.collab_dim:
            if examples.item_factors is None:
                raise ValueError(f"collab_dim={cfg.collab_dim} needs the examples' item factors")
            logits = logits + examples.item_factors @ params.collab
        rows = [shared.attention_channels, shared.visual_bias]
        coeff = torch.stack([params.channel, *rows] if cfg.readout == "spanning" else rows, dim=1)  # (N, R, d)
        frame = self._frame_of(examples.maps)
        part, saved = frame.forward(examples.maps, coeff, params, cfg)
        data, g = objective_loss(logits + part, examples.labels, examples.weights, cfg.objective)  # g = dL/dscore (B,)
        frame.backward(saved, g, params, grads, cfg)
        torch.sum(g, dim=0, keepdim=True, out=grads.bias)
        if cfg.collab_dim:
            torch.mv(examples.item_factors.T, g, out=grads.collab)
        loss = data + 0.5 * self.online.l2 * torch.dot(offsets, offsets)
        return loss, grad.add_(offsets, alpha=self.online.l2)

    def _blocks(self, flat: Tensor) -> _Blocks:
        """Named views of one flat (P,) vector: the blocks of ParamLayout, (N, m^2) and (N, d') shaped."""
        interest, channel, attention, fusion, bias, collab = torch.split(flat, self._sizes)
        n = self.cfg.n_layers
        return _Blocks(interest.view(n, -1), channel.view(n, -1), attention.view(n, -1), fusion, bias, collab)

    def _frame_of(self, maps: list[Tensor]) -> _Frame:
        """The frame of these maps' grids (cached per list of grids and dtype)."""
        key = (tuple((x.shape[2], x.shape[3]) for x in maps), maps[0].dtype)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = _Frame.of(list(key[0]), self.cfg.kernel_size, self.cfg.pool, key[1])
        return frame

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
            accum = torch.addcmul(state.accum, grad, grad)
            new_offsets = torch.addcdiv(offsets, grad, accum.sqrt().add_(self.online.epsilon), value=-self.online.learning_rate)
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
