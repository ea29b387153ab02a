"""The patented scorer (claims 1-9): per-user convolution kernels over CNN feature maps.

Shapes used throughout:
    U users, I items, N tapped conv layers (j = 1..N), d projected channels per layer,
    (H_j, W_j) the stored grid of layer j, m the kernel width, p the max-pool window,
    (h_j, w_j) = (ceil(H_j / p), ceil(W_j / p)) the pooled grid, P the per-user parameter count.

Per user i and layer j (docs/design.md maps each line to its claim):
    A_ij  = F_j (*) (c_ij x K_ij)                      first feature matrix   (I, U, H_j, W_j)
    P_ij  = maxpool_p(A_ij)                            claim 4                (I, U, h_j, w_j)
    V_ij  = avgpool_p(g_j . F_j) (*) Q_ij              second feature matrix  (I, U, h_j, w_j)
    w_ij  = softmax over all (s, t) of V_ij            claim 8
    o_ij  = sum_st w_ij[s, t] * P_ij[s, t]             claim 4
    o_i   = sum_j r_ij * o_ij                          claims 5 and 9
    score = global_bias + user_bias + item_bias + o_i (+ p_i . q_x)
where (*) is a 'same'-padded 2-D convolution, K_ij and Q_ij are m x m (claims 6 and 7), c_ij (d,)
is the user's channel factor of the interest kernel (readout "spanning") and g_j (d,) a shared
channel reduction for attention. With readout "per_channel", K_ij is applied to every channel
separately and the max pool also takes the max over channels (c_ij is then absent).

The hybrid extension (docs/design.md, "Hybrid extension"; off by default) adds a collaborative term
p_i . q_x: a per-user factor p_i (k,) in the user's parameter vector and a per-item factor q_x (k,)
learned offline for items seen in training (0 for new items, which the visual terms rank).
collab_dim = 0 is the faithful patent model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Readout = Literal["spanning", "per_channel"]
Objective = Literal["pointwise", "pairwise"]


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of the scorer. Every stored artifact records these and refuses a mismatch."""

    n_layers: int = 3  # N, tapped conv layers of the backbone
    kernel_size: int = 3  # m, width of the interest and attention kernels
    channels: int = 8  # d, channels per layer after the projection
    pool: int = 2  # p, max-pool window and stride (claim 4)
    readout: Readout = "spanning"
    collab_dim: int = 0  # k, the hybrid extension's collaborative factors (0: the faithful model)
    objective: Objective = "pointwise"  # the loss of training and of the online step

    def __post_init__(self) -> None:
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        if self.channels < 1:
            raise ValueError(f"channels must be >= 1, got {self.channels}")
        if self.pool < 1:
            raise ValueError(f"pool must be >= 1, got {self.pool}")
        if self.readout not in ("spanning", "per_channel"):
            raise ValueError(f"readout must be 'spanning' or 'per_channel', got {self.readout!r}")
        if self.collab_dim < 0:
            raise ValueError(f"collab_dim must be >= 0, got {self.collab_dim}")
        if self.objective not in ("pointwise", "pairwise"):
            raise ValueError(f"objective must be 'pointwise' or 'pairwise', got {self.objective!r}")

    @property
    def channel_factor_size(self) -> int:
        """Length of c_ij: d under the spanning readout, 0 under per_channel."""
        return self.channels if self.readout == "spanning" else 0


@dataclass(frozen=True)
class UserParams:
    """Per-user parameters as views into one flat (U, P) tensor.

    interest  (U, N, m, m)  K, embedding table 1 (claim 6)
    channel   (U, N, d')    c, channel factor of the interest kernel (d' = d or 0); table 1 as well
    attention (U, N, m, m)  Q, embedding table 2 (claim 7)
    fusion    (U, N)        r, the target weight matrix (claims 5 and 9)
    bias      (U,)          user bias (calibrates the loss; does not change a user's ranking)
    collab    (U, k)        p, the hybrid extension's collaborative factor (k = 0: absent)
    """

    flat: Tensor
    interest: Tensor
    channel: Tensor
    attention: Tensor
    fusion: Tensor
    bias: Tensor
    collab: Tensor


class ParamLayout:
    """Where each named block of a user's flat parameter vector lives."""

    def __init__(self, cfg: ModelConfig) -> None:
        n, m = cfg.n_layers, cfg.kernel_size
        self.cfg = cfg
        self.shapes: dict[str, tuple[int, ...]] = {
            "interest": (n, m, m),
            "channel": (n, cfg.channel_factor_size),
            "attention": (n, m, m),
            "fusion": (n,),
            "bias": (),
            "collab": (cfg.collab_dim,),
        }
        self.slices: dict[str, slice] = {}
        start = 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            self.slices[name] = slice(start, start + size)
            start += size
        self.size = start

    def split(self, flat: Tensor) -> UserParams:
        """(U, P) -> named views (no copy)."""
        if flat.dim() != 2 or flat.shape[1] != self.size:
            raise ValueError(f"expected (U, {self.size}) user parameters, got {tuple(flat.shape)}")
        u = flat.shape[0]
        views = {name: flat[:, sl].reshape(u, *self.shapes[name]) for name, sl in self.slices.items()}
        return UserParams(flat=flat, **views)

    def join(self, **blocks: Tensor) -> Tensor:
        """Named (U, ...) blocks -> flat (U, P); the inverse of split. Empty blocks may be left out."""
        first = next(iter(blocks.values()))
        u = first.shape[0]
        empty = {name for name, shape in self.shapes.items() if math.prod(shape) == 0}
        missing = set(self.shapes) - set(blocks) - empty
        if missing:
            raise ValueError(f"missing parameter blocks: {sorted(missing)}")
        parts = [blocks[name].reshape(u, -1) if name in blocks else first.new_zeros(u, 0) for name in self.shapes]
        return torch.cat(parts, dim=1)


class UserTables(nn.Module):
    """Per-user offsets as embedding tables keyed by user index (claims 6 and 7).

    Table 1 (interest) holds K and the channel factor c, table 2 (attention) holds Q, with separate
    weight matrices; small tables hold the fusion weights r, the user bias and (hybrid extension)
    the collaborative factor p. forward(users) returns the flat (U, P) offsets that
    ParamLayout.split names.
    """

    def __init__(self, cfg: ModelConfig, num_users: int) -> None:
        super().__init__()
        self.layout = ParamLayout(cfg)
        n, m = cfg.n_layers, cfg.kernel_size
        self.interest = nn.Embedding(num_users, n * m * m + n * cfg.channel_factor_size)
        self.attention = nn.Embedding(num_users, n * m * m)
        self.fusion = nn.Embedding(num_users, n)
        self.bias = nn.Embedding(num_users, 1)
        self.collab = nn.Embedding(num_users, cfg.collab_dim)
        for table in (self.interest, self.attention, self.fusion, self.bias, self.collab):
            nn.init.zeros_(table.weight)

    def forward(self, users: Tensor) -> Tensor:
        """users (U,) long -> offsets (U, P)."""
        n, m = self.layout.cfg.n_layers, self.layout.cfg.kernel_size
        interest = self.interest(users)
        return self.layout.join(
            interest=interest[:, : n * m * m],
            channel=interest[:, n * m * m :],
            attention=self.attention(users),
            fusion=self.fusion(users),
            bias=self.bias(users),
            collab=self.collab(users),
        )


@dataclass
class SharedParams:
    """Parameters shared by all users; frozen during the online step.

    prior              (P,)    the mean user; a user's parameters are prior + that user's offsets
    attention_channels (N, d)  g_j, the channel reduction inside the attention kernel
    visual_bias        (N, d)  item bias from the spatial mean of each layer (serves new items)
    global_bias        ()      scalar
    """

    prior: Tensor
    attention_channels: Tensor
    visual_bias: Tensor
    global_bias: Tensor

    @classmethod
    def initial(cls, cfg: ModelConfig) -> SharedParams:
        """An untrained prior: box interest kernels, uniform attention, equal layer weights.

        The channel factor starts at zero so a new user is neutral: only biases rank items until
        the user's own events move the factor (its gradient is non-zero because K is non-zero).
        """
        layout = ParamLayout(cfg)
        n, m, d = cfg.n_layers, cfg.kernel_size, cfg.channels
        prior = layout.join(
            interest=torch.full((1, n, m, m), 1.0 / (m * m)),
            channel=torch.zeros(1, n, cfg.channel_factor_size),
            attention=torch.zeros(1, n, m, m),
            fusion=torch.full((1, n), 1.0 / n),
            bias=torch.zeros(1),
            collab=torch.zeros(1, cfg.collab_dim),
        )[0]
        return cls(
            prior=prior,
            attention_channels=torch.full((n, d), 1.0 / d),
            visual_bias=torch.zeros(n, d),
            global_bias=torch.zeros(()),
        )

    def to(self, dtype: torch.dtype) -> SharedParams:
        return SharedParams(**{name: t.to(dtype) for name, t in self.tensors().items()})

    def tensors(self) -> dict[str, Tensor]:
        return {
            "prior": self.prior,
            "attention_channels": self.attention_channels,
            "visual_bias": self.visual_bias,
            "global_bias": self.global_bias,
        }


@dataclass(frozen=True)
class LayerReadout:
    """Intermediate results of one layer for U users x I items (for inspection and heatmaps).

    pooled    (I, U, h, w)  max-pooled first feature matrix
    attention (I, U, h, w)  softmax-normalised second feature matrix
    """

    pooled: Tensor
    attention: Tensor

    def preference(self) -> Tensor:
        """o_ij: (U, I)."""
        return (self.pooled * self.attention).sum(dim=(2, 3)).T


def layer_readout(
    maps: Tensor,
    interest: Tensor,
    channel: Tensor,
    attention: Tensor,
    attention_channels: Tensor,
    cfg: ModelConfig,
) -> LayerReadout:
    """One layer j of the scorer for every (user, item) pair.

    maps (I, d, H, W); interest (U, m, m); channel (U, d') ; attention (U, m, m);
    attention_channels (d,).
    """
    i_count, d, _, _ = maps.shape
    u_count, m = interest.shape[0], cfg.kernel_size
    pad, p = m // 2, cfg.pool
    if cfg.readout == "spanning":
        # The kernel spans the channels: (U, d, m, m) = c_u outer K_u.
        kernel = channel[:, :, None, None] * interest[:, None, :, :]
        first = F.conv2d(maps, kernel, padding=pad)  # (I, U, H, W)
        pooled = F.max_pool2d(first, p, p, ceil_mode=True)
    else:
        # K_u on every channel separately, then a max over channels and the window.
        per_channel = F.conv2d(maps.reshape(i_count * d, 1, *maps.shape[2:]), interest[:, None], padding=pad)
        first = per_channel.reshape(i_count, d, u_count, *maps.shape[2:]).amax(dim=1)
        pooled = F.max_pool2d(first, p, p, ceil_mode=True)
    reduced = torch.einsum("c,ichw->ihw", attention_channels, maps)[:, None]  # (I, 1, H, W)
    coarse = F.avg_pool2d(reduced, p, p, ceil_mode=True)  # (I, 1, h, w)
    second = F.conv2d(coarse, attention[:, None], padding=pad)  # (I, U, h, w)
    weights = torch.softmax(second.flatten(2), dim=-1).reshape(second.shape)  # claim 8
    return LayerReadout(pooled=pooled, attention=weights)


# Below this many users, layer_preference scores user by user on the pairs path (measured on 2 cores:
# the channels-last convolution needs ~16 output channels to beat it).
_FEW_USERS = 16


def _pool_max(first: Tensor, p: int) -> Tensor:
    """Claim 4's max pool, ceil mode only where the grid needs it (the channels-last kernel is ~8x
    slower with ceil_mode, and on a grid divisible by p both give the same windows)."""
    h, w = first.shape[-2:]
    return F.max_pool2d(first, p, p, ceil_mode=bool(h % p or w % p))


def _pool_mean(plane: Tensor, p: int) -> Tensor:
    h, w = plane.shape[-2:]
    return F.avg_pool2d(plane, p, p, ceil_mode=bool(h % p or w % p))


def _attend(second: Tensor, pooled: Tensor, dim: int) -> Tensor:
    """sum over `dim` of softmax(second) * pooled (claims 4 and 8), normalising after the sum.

    The max subtracted for range safety is a constant to autograd (softmax does not depend on it),
    so the gradient is softmax's own.
    """
    e = (second - second.amax(dim=dim, keepdim=True).detach()).exp()
    return (e * pooled).sum(dim=dim) / e.sum(dim=dim)


def layer_preference(
    maps: Tensor,
    interest: Tensor,
    channel: Tensor,
    attention: Tensor,
    attention_channels: Tensor,
    cfg: ModelConfig,
) -> Tensor:
    """o_ij of layer j for every (user, item) pair: (U, I). The math of layer_readout, laid out for speed.

    maps (I, d, H, W); interest (U, m, m); channel (U, d'); attention (U, m, m); attention_channels (d,).
    The users are the output channels of one channels-last convolution (I, U, H, W) stored
    (I, H, W, U), so the max pool and the attention run over contiguous runs of users; the
    attention logits are a second convolution of the same layout (users as output channels).
    """
    i_count, d, h, w = maps.shape
    u_count, m = interest.shape[0], cfg.kernel_size
    pad, p = m // 2, cfg.pool
    if u_count < _FEW_USERS:  # too few output channels for the convolution to vectorise: user by user
        rows = [
            pair_layer_preference(maps, interest[u : u + 1], channel[u : u + 1], attention[u : u + 1], attention_channels, cfg)
            for u in range(u_count)
        ]
        return torch.stack(rows) if rows else maps.new_zeros(0, i_count)
    if cfg.readout == "spanning":
        kernel = (channel[:, :, None, None] * interest[:, None, :, :]).contiguous(memory_format=torch.channels_last)
        first = F.conv2d(maps.contiguous(memory_format=torch.channels_last), kernel, padding=pad)  # (I, U, H, W)
    else:
        planes = maps.reshape(i_count * d, 1, h, w)  # one plane per (item, channel); 1 channel: already channels-last
        per_channel = F.conv2d(planes, interest[:, None].contiguous(memory_format=torch.channels_last), padding=pad)
        # (I d, U, H, W) stored (I, d, H, W, U): the max over channels reads contiguous blocks.
        first = per_channel.permute(0, 2, 3, 1).reshape(i_count, d, h, w, u_count).amax(dim=1).permute(0, 3, 1, 2)
    pooled = _pool_max(first, p)  # (I, U, h', w')
    pooled = pooled.permute(0, 2, 3, 1).reshape(i_count, -1, u_count)  # (I, h'w', U)
    reduced = torch.einsum("c,ichw->ihw", attention_channels, maps)[:, None]  # (I, 1, H, W)
    kernel = attention[:, None].contiguous(memory_format=torch.channels_last)  # (U, 1, m, m)
    second = F.conv2d(_pool_mean(reduced, p), kernel, padding=pad)  # (I, U, h', w') stored (I, h', w', U)
    second = second.permute(0, 2, 3, 1).reshape(i_count, -1, u_count)  # (I, h'w', U)
    return _attend(second, pooled, dim=1).T


def preference(params: UserParams, maps: list[Tensor], shared: SharedParams, cfg: ModelConfig) -> Tensor:
    """Fused user preference o_i (claims 1-5, 9): (U, I) from maps [(I, d, H_j, W_j)] * N."""
    if len(maps) != cfg.n_layers:
        raise ValueError(f"expected {cfg.n_layers} layers of maps, got {len(maps)}")
    fused = 0.0
    for j, layer_maps in enumerate(maps):
        o = layer_preference(
            layer_maps,
            params.interest[:, j],
            params.channel[:, j],
            params.attention[:, j],
            shared.attention_channels[j],
            cfg,
        )
        fused = fused + params.fusion[:, j : j + 1] * o
    return fused


def visual_item_bias(maps: list[Tensor], shared: SharedParams) -> Tensor:
    """Bias an item earns from its content alone: (I,). Serves items never seen in training."""
    means = torch.stack([m.mean(dim=(2, 3)) for m in maps], dim=1)  # (I, N, d)
    return torch.einsum("ind,nd->i", means, shared.visual_bias)


def score(
    params: UserParams,
    maps: list[Tensor],
    item_bias: Tensor,
    shared: SharedParams,
    cfg: ModelConfig,
    item_factors: Tensor | None = None,
) -> Tensor:
    """Ranking score for every (user, item) pair: (U, I).

    item_bias (I,) is the learned per-item residual (zero for items unseen in training); the
    visual bias and the global and user biases are added here. item_factors (I, k): the items'
    collaborative factors, needed when cfg.collab_dim > 0.
    """
    pref = preference(params, maps, shared, cfg)
    items = item_bias + visual_item_bias(maps, shared)
    out = shared.global_bias + params.bias[:, None] + items[None, :] + pref
    if cfg.collab_dim:
        out = out + params.collab @ _factors(item_factors, len(item_bias), cfg).T
    return out


def _factors(item_factors: Tensor | None, count: int, cfg: ModelConfig) -> Tensor:
    """item_factors checked against (count, k) for the hybrid extension's term."""
    if item_factors is None or tuple(item_factors.shape) != (count, cfg.collab_dim):
        got = None if item_factors is None else tuple(item_factors.shape)
        raise ValueError(f"collab_dim={cfg.collab_dim} needs item factors of shape ({count}, {cfg.collab_dim}), got {got}")
    return item_factors


def pair_layer_preference(
    maps: Tensor,
    interest: Tensor,
    channel: Tensor,
    attention: Tensor,
    attention_channels: Tensor,
    cfg: ModelConfig,
) -> Tensor:
    """o_ij of layer j for B aligned (user, item) pairs: (B,).

    maps (B, d, H, W) of the pairs' items; interest (B, m, m); channel (B, d'); attention (B, m, m)
    (or one row each, shared by every pair: one user against a shortlist).
    Each pair has its own kernel, so the pairs are the channels of one image: the planes are laid
    out (H, W, B) (channels-last) and the convolutions are depthwise (groups = B), which the CPU
    runs vectorised across pairs. Under the spanning readout the kernel c outer K is separable:
    F (*) (c outer K) = (c . F) (*) K, so one plane per pair is convolved.
    """
    b, d, h, w = maps.shape
    m, p = cfg.kernel_size, cfg.pool
    pad = m // 2
    flat = maps.reshape(b, d, h * w)

    def pairs_image(planes: Tensor) -> Tensor:  # (B, H W) -> (1, B, H, W) channels-last
        return planes.T.contiguous().view(1, h, w, b).permute(0, 3, 1, 2)

    def depthwise(kernel: Tensor, count: int) -> Tensor:  # (B or 1, m, m) -> (count, 1, m, m)
        return kernel.reshape(-1, 1, m, m).expand(count, 1, m, m).contiguous()

    if cfg.readout == "spanning":
        if channel.shape[0] == 1:  # one user: one (2, d) reduction for every pair
            planes = torch.matmul(torch.stack([channel[0], attention_channels]), flat)  # (B, 2, H W)
        else:
            planes = torch.bmm(torch.stack([channel, attention_channels.expand(b, d)], dim=1), flat)
        both = planes.permute(1, 2, 0).contiguous()  # (2, H W, B)
        first_in = both[0].view(1, h, w, b).permute(0, 3, 1, 2)
        reduced = both[1].view(1, h, w, b).permute(0, 3, 1, 2)
        first = F.conv2d(first_in, depthwise(interest, b), padding=pad, groups=b)  # (1, B, H, W)
    else:
        # Every (pair, channel) plane is a channel of the image, stored (H, W, B, d).
        image = maps.permute(2, 3, 0, 1).contiguous().view(1, h, w, b * d).permute(0, 3, 1, 2)
        kernels = interest.reshape(-1, 1, m * m).expand(b, d, m * m).reshape(b * d, 1, m, m)
        per_channel = F.conv2d(image, kernels, padding=pad, groups=b * d)  # (1, B d, H, W) stored (H, W, B, d)
        first = per_channel.permute(0, 2, 3, 1).reshape(1, h, w, b, d).amax(dim=4).permute(0, 3, 1, 2)
        reduced = pairs_image(torch.matmul(attention_channels, flat))
    pooled = _pool_max(first, p)  # (1, B, h', w')
    second = F.conv2d(_pool_mean(reduced, p), depthwise(attention, b), padding=pad, groups=b)
    pooled = pooled.permute(0, 2, 3, 1).reshape(-1, b)  # (h'w', B)
    second = second.permute(0, 2, 3, 1).reshape(-1, b)
    return _attend(second, pooled, dim=0)


def pair_scores(
    params: UserParams,
    maps: list[Tensor],
    item_bias: Tensor,
    shared: SharedParams,
    cfg: ModelConfig,
    item_factors: Tensor | None = None,
    visual_bias: Tensor | None = None,
) -> Tensor:
    """score() for B aligned pairs (user row k with item row k) without the U x I product: (B,).

    params may also hold one row, shared by every pair (one user against B items). visual_bias (B,):
    the items' visual_item_bias where the caller keeps it (the retrieval stage does: computing it
    reads every map again, ~13 % of this function's time); None computes it here.
    """
    fused = 0.0
    for j, layer_maps in enumerate(maps):
        o = pair_layer_preference(
            layer_maps, params.interest[:, j], params.channel[:, j], params.attention[:, j], shared.attention_channels[j], cfg
        )
        fused = fused + params.fusion[:, j] * o
    if visual_bias is None:
        visual_bias = visual_item_bias(maps, shared)
    out = shared.global_bias + params.bias + item_bias + visual_bias + fused
    if cfg.collab_dim:
        out = out + (params.collab * _factors(item_factors, len(item_bias), cfg)).sum(dim=1)
    return out
