"""Per-layer channel projection C_j -> d: PCA with whitening, fitted on the spatial positions of
backbone feature maps, stored as safetensors with a content hash that is checked on load.

For a tapped block with maps F (B, C, H, W), every spatial position is one sample x (C,). With mean
mu (C,), orthonormal principal directions U (K, C) sorted by variance lambda (K,), K = min(C, 64),
the projection to d <= K channels is

    y = diag(1 / sqrt(lambda[:d] + eps)) U[:d] (x - mu)        y (d,), unit variance per channel

eps = 1e-4 * lambda[0] keeps near-empty directions from being amplified into noise. One file holds
every stage end of the backbone, so any N and any d <= K_j use it; `version(d)` names the result.
Being affine, the projection commutes with the spatial average pooling and the frame mean the
extractor applies afterwards.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "mmrec-projection/1"
MAX_COMPONENTS = 64
EPS_RATIO = 1e-4


class ProjectionIntegrityError(ValueError):
    """A projection file whose tensors do not match its recorded hash, or of an unknown format."""


@dataclass(frozen=True)
class LayerPCA:
    """mean (C,), components (K, C) orthonormal rows by decreasing variance, variances (K,); float32."""

    mean: Tensor
    components: Tensor
    variances: Tensor

    @property
    def channels(self) -> int:
        return self.mean.shape[0]

    def affine(self, d: int) -> tuple[Tensor, Tensor]:
        """Weights (d, C) and bias (d,) of y = W x + b, the whitened projection to d channels."""
        if not 1 <= d <= self.components.shape[0]:
            raise ValueError(f"d={d} outside 1..{self.components.shape[0]} for a {self.channels}-channel layer")
        scale = torch.rsqrt(self.variances[:d] + EPS_RATIO * self.variances[0])
        weight = self.components[:d] * scale[:, None]
        return weight, -(weight @ self.mean)


class Projection:
    """PCA of each tapped block, keyed by block index; `digest` is the SHA-256 of its content."""

    def __init__(self, layers: dict[int, LayerPCA], meta: dict[str, str]) -> None:
        self.layers = dict(sorted(layers.items()))
        self.meta = dict(meta)
        self.digest = _digest(self._tensors(), self.meta)

    def version(self, d: int) -> str:
        """Names the feature space of this projection to d channels, e.g. 'pca-1a2b3c4d5e6f-d8'."""
        return f"pca-{self.digest[:12]}-d{d}"

    def layer(self, block: int) -> LayerPCA:
        if block not in self.layers:
            raise KeyError(f"projection has no block {block} (has {list(self.layers)})")
        return self.layers[block]

    def _tensors(self) -> dict[str, Tensor]:
        out = {}
        for block, pca in self.layers.items():
            out[f"block{block}.mean"] = pca.mean
            out[f"block{block}.components"] = pca.components
            out[f"block{block}.variances"] = pca.variances
        return out

    def save(self, path: Path) -> None:
        """Write safetensors with the metadata and the content hash (no pickle)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self._tensors().items()}
        save_file(tensors, str(path), metadata={**self.meta, "format": FORMAT, "sha256": self.digest})

    @classmethod
    def load(cls, path: Path) -> Projection:
        """Read a file written by save; raises ProjectionIntegrityError if its hash does not match."""
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.pop("format", None) != FORMAT:
            raise ProjectionIntegrityError(f"{path} is not a {FORMAT} file")
        recorded = meta.pop("sha256", "")
        blocks = sorted({int(k.split(".")[0][len("block") :]) for k in tensors})
        layers = {
            b: LayerPCA(tensors[f"block{b}.mean"], tensors[f"block{b}.components"], tensors[f"block{b}.variances"])
            for b in blocks
        }
        projection = cls(layers, meta)
        if projection.digest != recorded:
            raise ProjectionIntegrityError(
                f"{path}: content hash {projection.digest[:12]} != recorded {recorded[:12]}; the file was altered"
            )
        return projection


def default_projection_path() -> Path:
    """The projection shipped in mmrec/assets (made by `mmrec fit-projection`)."""
    return Path(str(files("mmrec") / "assets" / "projection-mobilenet_v2-b0353104.safetensors"))


class PCAFitter:
    """Streams feature maps into float64 moments per block, then solves each PCA exactly."""

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._sum: dict[int, Tensor] = {}
        self._outer: dict[int, Tensor] = {}

    def update(self, block: int, maps: Tensor) -> None:
        """maps (B, C, H, W): each of the B*H*W positions is one sample."""
        x = maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1]).to(torch.float64)
        if block not in self._count:
            c = maps.shape[1]
            self._count[block] = 0
            self._sum[block] = torch.zeros(c, dtype=torch.float64)
            self._outer[block] = torch.zeros(c, c, dtype=torch.float64)
        self._count[block] += x.shape[0]
        self._sum[block] += x.sum(dim=0)
        self._outer[block] += x.T @ x

    def finish(self, meta: dict[str, str]) -> Projection:
        """Eigendecomposition of each covariance; signs fixed so each component's largest-|.| entry is > 0."""
        layers = {}
        for block, n in self._count.items():
            mean = self._sum[block] / n
            cov = self._outer[block] / n - torch.outer(mean, mean)
            values, vectors = torch.linalg.eigh(cov)  # ascending
            k = min(MAX_COMPONENTS, cov.shape[0])
            values, vectors = values.flip(0)[:k].clamp_min(0.0), vectors.flip(1)[:, :k].T  # (K,), (K, C)
            pivot = vectors.abs().argmax(dim=1)
            vectors = vectors * torch.sign(vectors.gather(1, pivot[:, None]))
            layers[block] = LayerPCA(mean.float(), vectors.float().contiguous(), values.float())
        samples = {str(b): n for b, n in self._count.items()}
        return Projection(layers, {**meta, "samples": json.dumps(samples, sort_keys=True)})


def _digest(tensors: dict[str, Tensor], meta: dict[str, str]) -> str:
    h = hashlib.sha256(FORMAT.encode())
    for key in sorted(meta):
        h.update(f"\0meta\0{key}\0{meta[key]}".encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"\0tensor\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
