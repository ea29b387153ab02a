"""The online learning step: one Adagrad-scaled SGD update of one user's offsets per event.

Only the user's own parameters move; the shared prior, channel reductions and biases are frozen.
Loss for a user with offsets delta over the event's examples (the engaged item, sampled
negatives, ...):
    L(delta) = sum_k w_k * BCE(score_k, y_k) / sum_k w_k + l2 / 2 * ||delta||^2

The step's gradient is computed in closed form (`loss_and_grad_many`): one user against a handful
of items is far too small for autograd's graph to pay off (building and walking it cost more than
the arithmetic), and even the closed form's time is mostly the fixed cost of each torch op, so the
events of U different users (`step_many`) and all N layers run as one batch of U N (user, layer)
planes, one event being the batch of U = 1: every layer's maps sit top-left in one zero frame
(`_Frame`: the largest grid plus m//2 zero rows and columns, in whole pooling windows). Planes are laid out flat, so a
kernel's 'same' neighbourhoods are m^2 shifted copies of them (shifts: `_shifted`, the zero margins the
padding). A layer's outputs outside its own grid are masked out of the max pool and its pooled
positions out of the softmax; the mean pool's windows that its edge clips (ceil mode) are rescaled.
Shapes below (per user; the batch adds a leading U): B examples, N layers, frame (H, W) with pooled
frame (h, w), kernel width m, per layer j channel factor c_j, kernels K_j and Q_j, attention
channels g_j, fusion weight r_j.

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

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from mmrec.model import ModelConfig, ParamLayout, SharedParams, UserParams, score
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


@dataclass(frozen=True)
class ExampleBatch:
    """The examples of U events, I items each (one event per user: each row has its own offsets).

    maps         N x (U I, d, H_j, W_j) float32, user-major
    item_bias    (U, I)
    labels       (U, I)
    weights      (U, I)
    item_factors (U, I, k) or None
    """

    maps: list[Tensor]
    item_bias: Tensor
    labels: Tensor
    weights: Tensor
    item_factors: Tensor | None = None

    @classmethod
    def of(cls, examples: Sequence[Examples]) -> ExampleBatch:
        """The batch of events with the same number of examples each."""
        if len({len(e.labels) for e in examples}) != 1:
            raise ValueError("a batch needs the same number of examples for every event")
        if len(examples) == 1:  # views, no copies: the single step's path
            e = examples[0]
            factors = None if e.item_factors is None else e.item_factors[None]
            return cls(list(e.maps), e.item_bias[None], e.labels[None], e.weights[None], factors)
        factors = [e.item_factors for e in examples]
        return cls(
            maps=[torch.cat(layer) for layer in zip(*(e.maps for e in examples))],
            item_bias=torch.stack([e.item_bias for e in examples]),
            labels=torch.stack([e.labels for e in examples]),
            weights=torch.stack([e.weights for e in examples]),
            item_factors=None if any(f is None for f in factors) else torch.stack(factors),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class StepRequest:
    """One event for `OnlineLearner.step_many`: the user's state, the event's examples and id, where
    it was read (partition and offset, -1 if not from Kafka), when it happened (unix s), and its
    media when the user engaged with it (not a mere impression)."""

    state: UserState
    examples: Examples
    event_id: str
    partition: int = -1
    position: int = -1
    now: float = 0.0
    engaged_media: str | None = None


def objective_loss(logits: Tensor, labels: Tensor, weights: Tensor, objective: str) -> tuple[Tensor, Tensor]:
    """The data term of the loss (U,) over each user's example scores (U, B) and its gradient
    dL/dscore (U, B) (module docstring: pointwise BCE or the pairwise loss of row 0 against the others).

    Computed in float64 and rounded back: torch's vectorised exp, log and sigmoid round differently
    from its scalar ones, and which elements of a tensor take which depends on where they sit in it.
    In float32 a user's step would then depend on the batch around them; in float64 the two agree
    far below float32's rounding, so a batched step's loss and gradient equal the step's alone (with
    the frame's alignment, `_Frame`; the softmax of `_Frame.forward` likewise)."""
    dtype = logits.dtype
    loss, grad = _objective_loss(logits.double(), labels.double(), weights.double(), objective)
    return loss.to(dtype), grad.to(dtype)


def _objective_loss(logits: Tensor, labels: Tensor, weights: Tensor, objective: str) -> tuple[Tensor, Tensor]:
    if objective == "pointwise":
        total = weights.sum(dim=1, keepdim=True)
        loss = (F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * weights).sum(dim=1) / total[:, 0]
        return loss, (torch.sigmoid(logits) - labels) * weights / total
    others = logits.shape[1] - 1
    if others < 1:
        return logits.new_zeros(len(logits)), torch.zeros_like(logits)
    scale = labels[:, :1] * weights[:, :1] / others  # (U, 1)
    margins = logits[:, 1:] - logits[:, :1]
    loss = scale[:, 0] * F.softplus(margins).sum(dim=1)
    pulls = scale * torch.sigmoid(margins)
    return loss, torch.cat([-pulls.sum(dim=1, keepdim=True), pulls], dim=1)


@dataclass(frozen=True)
class StepResult:
    state: UserState
    loss: float  # the event's loss before the update
    applied: bool  # False when the event was a duplicate and nothing changed


_ALIGN = 16  # floats in a 64-byte vector register (AVX-512), the widest torch uses on CPU


def _rows(vectors: list[Tensor]) -> Tensor:
    """(P,) vectors -> (U, P); a view of a single one."""
    return vectors[0][None] if len(vectors) == 1 else torch.stack(vectors)


def _contract(matrices: Tensor, vectors: Tensor) -> Tensor:
    """matrices (n, R, L) @ vectors (n, L) -> (n, R), batched. The vectors go in as transposed rows:
    bmm takes a slow path (~8x here) for a contiguous (n, L, 1) operand."""
    return torch.bmm(matrices, vectors.reshape(len(vectors), 1, -1).transpose(1, 2)).view(len(vectors), -1)


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
    so that every layer's grid and pooled grid has the zero margin `_shifted` needs; (h, w) =
    (H/p, W/p), grown (fewest extra positions) until h w is a multiple of _ALIGN floats, so that each
    (user, layer) block of a batch sits at the same offset from torch's vector width as it does alone
    and the vectorised contractions sum a user's numbers in the same order (measured: without it a
    batched step's attention gradient differed from the step alone in the last bits for 5 x 5
    pooled grids).
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
        rows = -(-max(h for h, _ in grids) // p) + m // 2
        cols = -(-max(w for _, w in grids) // p) + m // 2
        rows, cols = min(
            ((r, c) for r in range(rows, rows + _ALIGN) for c in range(cols, cols + _ALIGN) if r * c % _ALIGN == 0),
            key=lambda size: (size[0] * size[1], size),
        )
        height, width = p * rows, p * cols
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

    def embed(self, maps: list[Tensor], users: int) -> Tensor:
        """N x (U B, d, H_j, W_j) -> (U, N, d, B, H, W), each layer top-left in zeros."""
        ub, d = maps[0].shape[:2]
        b = ub // users
        framed = maps[0].new_zeros(users, len(maps), d, b, self.height, self.width)
        for j, x in enumerate(maps):
            framed[:, j, :, :, : x.shape[2], : x.shape[3]] = x.view(users, b, d, x.shape[2], x.shape[3]).transpose(1, 2)
        return framed

    def forward(self, maps: list[Tensor], coeff: Tensor, params: UserParams, cfg: ModelConfig) -> tuple[Tensor, tuple]:
        """The layers' share of the logits (U, B) and what `backward` needs; coeff (U, N, R, d) holds
        each layer's channel reductions [c (spanning only), g, visual bias]. The U N (user, layer)
        pairs are the batch of every bmm; the per-layer constants broadcast over the users."""
        h, w, m, p = self.height, self.width, cfg.kernel_size, cfg.pool
        users, n_layers, rows, d = coeff.shape
        b = maps[0].shape[0] // users
        un = users * n_layers
        flat = self.embed(maps, users).view(un, d, -1)  # (U N, d, B H W)
        planes = torch.bmm(coeff.reshape(un, rows, d), flat)  # (U N, R, B H W)
        interest = params.interest.reshape(un, 1, -1)
        if cfg.readout == "spanning":  # F (*) (c outer K) = (c . F) (*) K: one plane per item, not d
            patches = _shifted(planes[:, 0], m, w)  # (U N, m^2, B H W)
            first = torch.bmm(interest, patches).view(users, n_layers, b, h, w)
            winners = None
        else:
            patches = _shifted(flat.view(un, -1), m, w)  # (U N, m^2, d B H W)
            per_channel = torch.bmm(interest, patches).view(un, d, b, h * w)
            best = per_channel.amax(dim=1)  # (U N, B, H W)
            winners = per_channel == best[:, None]
            first = best.view(users, n_layers, b, h, w)
        first = first.masked_fill(self.outside, torch.finfo(first.dtype).min)  # never a window's max
        pooled, where = F.max_pool2d(first.view(un, b, h, w), p, p, return_indices=True)  # (U N, B, h, w)
        coarse = F.avg_pool2d(planes[:, -2].view(un, b, h, w), p, p)
        if self.pool_scale is not None:
            coarse = (coarse.view(users, n_layers, b, h // p, w // p) * self.pool_scale).view(un, b, h // p, w // p)
        coarse = _shifted(coarse.reshape(un, -1), m, w // p)  # (U N, m^2, B h w)
        second = torch.bmm(params.attention.reshape(un, 1, -1), coarse).view(users, n_layers, b, -1)
        # (U N, B, h w); in float64 for the reason objective_loss gives
        weights = torch.softmax((second + self.pool_outside).double(), dim=-1).to(second.dtype).view(un, b, -1)
        pooled = pooled.view(un, b, -1)
        o = (weights * pooled).sum(dim=2)  # (U N, B)
        visual = planes[:, -1].reshape(un, b, -1).sum(dim=2)  # (U N, B)
        part = torch.bmm(params.fusion.view(users, 1, n_layers), o.view(users, n_layers, b))
        part = part + torch.bmm(self.inverse_size.expand(users, 1, n_layers), visual.view(users, n_layers, b))
        return part.view(users, b), (flat, patches, winners, where.view(un, b, -1), coarse, weights, pooled, o)

    def backward(self, saved: tuple, g: Tensor, params: UserParams, cfg: ModelConfig) -> dict[str, Tensor]:
        """The gradient's interest, channel, attention and fusion blocks, each (U, ...), given
        g = dL/dscore (U, B)."""
        flat, patches, winners, where, coarse, weights, pooled, o = saved
        users, b = g.shape
        un = len(o)
        n_layers = un // users
        grads = {"fusion": torch.bmm(o.view(users, n_layers, b), g.view(users, b, 1)).view(users, n_layers)}
        grad_pooled = weights * (params.fusion.reshape(users, n_layers, 1) * g.view(users, 1, b)).view(un, b, 1)  # dP = g r_j w
        grad_second = grad_pooled * (pooled - o[:, :, None])  # softmax backward
        grads["attention"] = _contract(coarse, grad_second).view(users, -1)
        grad_first = torch.zeros(un, b, self.height * self.width, dtype=g.dtype)
        grad_first.scatter_add_(2, where, grad_pooled)  # (U N, B, H W)
        if winners is None:
            grads["interest"] = _contract(patches, grad_first).view(users, -1)
            # dL/d(c . F): the K convolution's adjoint (the flipped kernel), then the channel reduction's
            flipped = params.interest.reshape(un, -1).flip(-1).view(un, 1, -1)
            grad_plane = torch.bmm(flipped, _shifted(grad_first.view(un, -1), cfg.kernel_size, self.width))
            grads["channel"] = _contract(flat, grad_plane).view(users, -1)
        else:
            share = winners.to(g.dtype)
            share = share / share.sum(dim=1, keepdim=True)  # amax's even split between ties
            grads["interest"] = _contract(patches, share * grad_first[:, None]).view(users, -1)
        return grads


class OnlineLearner:
    """Applies events to user states; deterministic for the same inputs."""

    def __init__(self, cfg: ModelConfig, shared: SharedParams, online: OnlineConfig) -> None:
        self.cfg = cfg
        self.shared = shared
        self.online = online
        self.layout = ParamLayout(cfg)
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

    def loss_and_grad(self, offsets: Tensor, examples: Examples) -> tuple[Tensor, Tensor]:
        """The loss of offsets (P,) on the examples and its gradient (P,): `loss_and_grad_many` of one user."""
        losses, grads = self.loss_and_grad_many(offsets[None], ExampleBatch.of([examples]))
        return losses[0], grads[0]

    @torch.inference_mode()
    def loss_and_grad_many(self, offsets: Tensor, batch: ExampleBatch) -> tuple[Tensor, Tensor]:
        """The losses (U,) of U users' offsets (U, P), each on its own examples, and their gradients
        (U, P), in closed form. In float32 (the worker's dtype) a user's row equals what they get alone,
        bit for bit (objective_loss and _Frame say how); in float64 to rounding.

        Both are inference tensors (inference mode saves ~15% of the step's dispatch overhead): read
        them or compute from them, but do not modify them in place outside inference mode.
        """
        cfg, shared = self.cfg, self.shared
        if len(batch.maps) != cfg.n_layers:
            raise ValueError(f"expected {cfg.n_layers} layers of maps, got {len(batch.maps)}")
        users = len(offsets)
        params = self.layout.split(shared.prior + offsets)
        logits = shared.global_bias + params.bias[:, None] + batch.item_bias  # (U, B)
        if cfg.collab_dim:
            if batch.item_factors is None:
                raise ValueError(f"collab_dim={cfg.collab_dim} needs the examples' item factors")
            logits = logits + torch.bmm(batch.item_factors, params.collab[:, :, None]).view(users, -1)
        rows = [r.expand(users, -1, -1) for r in (shared.attention_channels, shared.visual_bias)]  # (U, N, d)
        coeff = torch.stack([params.channel, *rows] if cfg.readout == "spanning" else rows, dim=2)  # (U, N, R, d)
        frame = self._frame_of(batch.maps)
        part, saved = frame.forward(batch.maps, coeff, params, cfg)
        data, g = objective_loss(logits + part, batch.labels, batch.weights, cfg.objective)  # g = dL/dscore (U, B)
        grads = frame.backward(saved, g, params, cfg)
        grads["bias"] = g.sum(dim=1)
        if cfg.collab_dim:
            grads["collab"] = torch.bmm(batch.item_factors.transpose(1, 2), g[:, :, None]).view(users, -1)
        loss = data + 0.5 * self.online.l2 * (offsets * offsets).sum(dim=1)
        return loss, self.layout.join(**grads).add_(offsets, alpha=self.online.l2)

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
        return self.step_many([StepRequest(state, examples, event_id, partition, position, now, engaged_media)])[0]

    def step_many(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """`step` for events of different users (each request's state is its user's latest), computed
        as batches of events with equal example counts. Each result equals `step`'s, bit for bit in float32."""
        results: list[StepResult | None] = [None] * len(requests)
        batches: dict[int, list[int]] = {}
        for k, r in enumerate(requests):
            if r.state.has_applied(r.event_id, r.partition, r.position):
                results[k] = StepResult(state=r.state, loss=float("nan"), applied=False)
            elif self.cfg.objective == "pairwise" and not r.examples.pairwise_signal():  # recorded, nothing to learn
                results[k] = self._advanced(r, r.state.offsets.detach(), r.state.accum, 0.0)
            else:
                batches.setdefault(len(r.examples.labels), []).append(k)
        for members in batches.values():
            offsets = _rows([requests[k].state.offsets.detach() for k in members])
            losses, grads = self.loss_and_grad_many(offsets, ExampleBatch.of([requests[k].examples for k in members]))
            accum = torch.addcmul(_rows([requests[k].state.accum for k in members]), grads, grads)
            new_offsets = torch.addcdiv(offsets, grads, accum.sqrt().add_(self.online.epsilon), value=-self.online.learning_rate)
            for row, k in enumerate(members):
                results[k] = self._advanced(requests[k], new_offsets[row].clone(), accum[row].clone(), float(losses[row]))
        return results  # type: ignore[return-value]  # every slot is filled above

    def _advanced(self, r: StepRequest, offsets: Tensor, accum: Tensor, loss: float) -> StepResult:
        """The applied result of request r: the new offsets and accumulator, the event recorded."""
        state = r.state
        new_state = replace(
            state,
            offsets=offsets,
            accum=accum,
            version=state.version + 1,
            partition=r.partition if r.partition >= 0 else state.partition,
            position=r.position if r.partition >= 0 else state.position,
            updated_at=r.now,
            recent=state.remember_event(r.event_id, self.online.recent_events),
            seen=state.seen if r.engaged_media is None else state.remember_media(r.engaged_media, self.online.seen_media),
        )
        return StepResult(state=new_state, loss=loss, applied=True)
