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
    score = global_bias + user_bias + item_bias + o_i
where (*) is a 'same'-padded 2-D convolution, K_ij and Q_ij are m x m (claims 6 and 7), c_ij (d,)
is the user's channel factor of the interest kernel (readout "spanning") and g_j (d,) a shared
channel reduction for attention. With readout "per_channel", K_ij is applied to every channel
separately and the max pool also takes the max over channels (c_ij is then absent).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Readout = Literal["spanning", "per_channel"]


@dataclass(frozen=True)
class ModelConfig:
    """Dimensions of the scorer. Every stored artifact records these and refuses a mismatch."""

    n_layers: int = 3  # N, tapped conv layers of the backbone
    kernel_size: int = 3  # m, width of the interest and attention kernels
    channels: int = 8  # d, channels per layer after the projection
    pool: int = 2  # p, max-pool window and stride (claim 4)
    readout: Readout = "spanning"

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
    """

    flat: Tensor
    interest: Tensor
    channel: Tensor
    attention: Tensor
    fusion: Tensor
    bias: Tensor


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
        """Named (U, ...) blocks -> flat (U, P); the inverse of split."""
        u = next(iter(blocks.values())).shape[0]
        missing = set(self.shapes) - set(blocks)
        if missing:
            raise ValueError(f"missing parameter blocks: {sorted(missing)}")
        return torch.cat([blocks[name].reshape(u, -1) for name in self.shapes], dim=1)


class UserTables(nn.Module):
    """Per-user offsets as embedding tables keyed by user index (claims 6 and 7).

    Table 1 (interest) holds K and the channel factor c, table 2 (attention) holds Q, with separate
    weight matrices; two small tables hold the fusion weights r and the user bias. forward(users)
    returns the flat (U, P) offsets that ParamLayout.split names.
    """

    def __init__(self, cfg: ModelConfig, num_users: int) -> None:
        super().__init__()
        self.layout = ParamLayout(cfg)
        n, m = cfg.n_layers, cfg.kernel_size
        self.interest = nn.Embedding(num_users, n * m * m + n * cfg.channel_factor_size)
        self.attention = nn.Embedding(num_users, n * m * m)
        self.fusion = nn.Embedding(num_users, n)
        self.bias = nn.Embedding(num_users, 1)
        for table in (self.interest, self.attention, self.fusion, self.bias):
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


def preference(params: UserParams, maps: list[Tensor], shared: SharedParams, cfg: ModelConfig) -> Tensor:
    """Fused user preference o_i (claims 1-5, 9): (U, I) from maps [(I, d, H_j, W_j)] * N."""
    if len(maps) != cfg.n_layers:
        raise ValueError(f"expected {cfg.n_layers} layers of maps, got {len(maps)}")
    fused = 0.0
    for j, layer_maps in enumerate(maps):
        readout = layer_readout(
            layer_maps,
            params.interest[:, j],
            params.channel[:, j],
            params.attention[:, j],
            shared.attention_channels[j],
            cfg,
        )
        fused = fused + params.fusion[:, j : j + 1] * readout.preference()
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
) -> Tensor:
    """Ranking score for every (user, item) pair: (U, I).

    item_bias (I,) is the learned per-item residual (zero for items unseen in training); the
    visual bias and the global and user biases are added here.
    """
    pref = preference(params, maps, shared, cfg)
    items = item_bias + visual_item_bias(maps, shared)
    return shared.global_bias + params.bias[:, None] + items[None, :] + pref


def pair_layer_preference(
    maps: Tensor,
    interest: Tensor,
    channel: Tensor,
    attention: Tensor,
    attention_channels: Tensor,
    cfg: ModelConfig,
) -> Tensor:
    """o_ij of layer j for B aligned (user, item) pairs: (B,).

    maps (B, d, H, W) of the pairs' items; interest (B, m, m); channel (B, d'); attention (B, m, m).
    Each pair has its own kernel, so the convolutions are batched matrix-vector products over
    unfolded patches (a grouped conv with B groups is far slower on CPU). Under the spanning readout
    the kernel c outer K is separable: F (*) (c outer K) = (c . F) (*) K, so only one plane per pair
    is unfolded.
    """
    b, d, h, w = maps.shape
    m, p = cfg.kernel_size, cfg.pool
    if cfg.readout == "spanning":
        plane = torch.einsum("bc,bchw->bhw", channel, maps)[:, None]  # (B, 1, H, W)
        patches = F.unfold(plane, m, padding=m // 2)  # (B, m^2, HW)
        first = torch.bmm(interest.reshape(b, 1, m * m), patches).reshape(b, h * w)
    else:
        patches = F.unfold(maps.reshape(b * d, 1, h, w), m, padding=m // 2)  # (B d, m^2, HW)
        kernel = interest.reshape(b, 1, m * m).repeat_interleave(d, dim=0)  # (B d, 1, m^2)
        first = torch.bmm(kernel, patches).reshape(b, d, h * w).amax(dim=1)
    pooled = F.max_pool2d(first.reshape(b, 1, h, w), p, p, ceil_mode=True).reshape(b, -1)  # (B, h'w')
    reduced = torch.einsum("c,bchw->bhw", attention_channels, maps)[:, None]
    coarse = F.avg_pool2d(reduced, p, p, ceil_mode=True)  # (B, 1, h', w')
    coarse_patches = F.unfold(coarse, m, padding=m // 2)  # (B, m^2, h'w')
    second = torch.bmm(attention.reshape(b, 1, m * m), coarse_patches).reshape(b, -1)
    weights = torch.softmax(second, dim=-1)
    return (weights * pooled).sum(dim=1)


def pair_scores(params: UserParams, maps: list[Tensor], item_bias: Tensor, shared: SharedParams, cfg: ModelConfig) -> Tensor:
    """score() for B aligned pairs (user row k with item row k) without the U x I product: (B,)."""
    fused = 0.0
    for j, layer_maps in enumerate(maps):
        o = pair_layer_preference(
            layer_maps, params.interest[:, j], params.channel[:, j], params.attention[:, j], shared.attention_channels[j], cfg
        )
        fused = fused + params.fusion[:, j] * o
    return shared.global_bias + params.bias + item_bias + visual_item_bias(maps, shared) + fused
