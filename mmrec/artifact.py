"""The versioned model artifact `mmrec train` writes and the worker loads: one safetensors file.

Tensors: prior (P,), attention_channels (N, d), visual_bias (N, d), global_bias (), item_bias (I,),
item_factors (I, k) (k = 0 for the faithful model), user_offsets (U, P). Metadata: format tag, model config, feature version, item and user ids (JSON),
training notes, and a SHA-256 digest of all of it; loading recomputes the digest and refuses a file
that does not match (or that does not match a digest pinned by the operator). Never pickle.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy
from torch import Tensor

from mmrec.catalogue import Catalogue
from mmrec.features import FeatureVersion
from mmrec.model import ModelConfig, ParamLayout, SharedParams

FORMAT = "mmrec.model/2"  # /1 lacked item_factors
_TENSORS = ("prior", "attention_channels", "visual_bias", "global_bias", "item_bias", "item_factors", "user_offsets")


class ArtifactError(ValueError):
    """The file is not a valid, intact model artifact (or not the one expected)."""


@dataclass(frozen=True)
class ModelArtifact:
    cfg: ModelConfig
    feature_version: FeatureVersion
    shared: SharedParams
    item_ids: tuple[str, ...]
    item_bias: Tensor  # (I,) learned residual per item
    item_factors: Tensor  # (I, k) collaborative factors per item (hybrid extension; k = 0: none)
    user_ids: tuple[str, ...]
    user_offsets: Tensor  # (U, P) each trained user's offsets from the prior
    notes: dict[str, str] = field(default_factory=dict)  # e.g. data set, events, epochs, trained_at

    @cached_property
    def item_rows(self) -> dict[str, int]:
        """Row of each trained media id in item_bias and item_factors."""
        return {media_id: row for row, media_id in enumerate(self.item_ids)}

    def apply_items(self, catalogue: Catalogue, media_ids: Sequence[str]) -> None:
        """Give these catalogue items their trained bias and factors (items the model never saw keep 0)."""
        known = [m for m in media_ids if m in self.item_rows]
        if known:
            rows, trained = catalogue.rows(known), torch.tensor([self.item_rows[m] for m in known])
            catalogue.item_bias[rows] = self.item_bias[trained]
            catalogue.item_factors[rows] = self.item_factors[trained]

    @property
    def version(self) -> str:
        """Content digest (first 12 hex digits of the SHA-256 over tensors and metadata)."""
        return _digest(self._arrays(), self._metadata())[:12]

    def _arrays(self) -> dict[str, np.ndarray]:
        tensors = {**self.shared.tensors(), "item_bias": self.item_bias, "item_factors": self.item_factors, "user_offsets": self.user_offsets}
        return {name: tensors[name].detach().to(torch.float32).contiguous().numpy() for name in _TENSORS}

    def _metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT,
            "config": json.dumps(asdict(self.cfg), sort_keys=True),
            "backbone": self.feature_version.backbone,
            "projection": self.feature_version.projection,
            "item_ids": json.dumps(list(self.item_ids)),
            "user_ids": json.dumps(list(self.user_ids)),
            "notes": json.dumps(self.notes, sort_keys=True),
        }


def save_artifact(artifact: ModelArtifact, path: Path) -> str:
    """Write the artifact; returns its full SHA-256 digest (also recorded inside the file)."""
    arrays, metadata = artifact._arrays(), artifact._metadata()
    digest = _digest(arrays, metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(save_numpy(arrays, metadata={**metadata, "sha256": digest}))
    tmp.replace(path)
    return digest


def load_artifact(path: Path, expected_sha256: str | None = None) -> ModelArtifact:
    """Read and verify an artifact. Raises ArtifactError on any mismatch or damage."""
    data = Path(path).read_bytes()
    try:
        arrays = load_numpy(data)
        header_size = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_size]).get("__metadata__", {})
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not a safetensors file: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT}")
    recorded = metadata.pop("sha256", None)
    if set(arrays) != set(_TENSORS):
        raise ArtifactError(f"{path}: tensors {sorted(arrays)}, expected {sorted(_TENSORS)}")
    digest = _digest(arrays, metadata)
    if recorded != digest:
        raise ArtifactError(f"{path}: content digest {digest[:12]} does not match the recorded {str(recorded)[:12]}")
    if expected_sha256 and expected_sha256.lower() not in (digest, digest[: len(expected_sha256)]):
        raise ArtifactError(f"{path}: digest {digest[:12]} is not the pinned {expected_sha256[:12]}")
    try:
        cfg = ModelConfig(**json.loads(metadata["config"]))
        item_ids, user_ids = tuple(json.loads(metadata["item_ids"])), tuple(json.loads(metadata["user_ids"]))
        notes = json.loads(metadata["notes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: bad metadata: {exc}") from None
    tensors = {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
    size = ParamLayout(cfg).size
    expected = {
        "prior": (size,),
        "attention_channels": (cfg.n_layers, cfg.channels),
        "visual_bias": (cfg.n_layers, cfg.channels),
        "global_bias": (),
        "item_bias": (len(item_ids),),
        "item_factors": (len(item_ids), cfg.collab_dim),
        "user_offsets": (len(user_ids), size),
    }
    wrong = {name: tuple(tensors[name].shape) for name, shape in expected.items() if tuple(tensors[name].shape) != shape}
    if wrong:
        raise ArtifactError(f"{path}: tensor shapes {wrong} do not fit the config {cfg}")
    return ModelArtifact(
        cfg=cfg,
        feature_version=FeatureVersion(metadata["backbone"], metadata["projection"]),
        shared=SharedParams(tensors["prior"], tensors["attention_channels"], tensors["visual_bias"], tensors["global_bias"]),
        item_ids=item_ids,
        item_bias=tensors["item_bias"],
        item_factors=tensors["item_factors"],
        user_ids=user_ids,
        user_offsets=tensors["user_offsets"],
        notes=notes,
    )


def _digest(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    hasher = hashlib.sha256()
    for name in _TENSORS:
        array = np.ascontiguousarray(arrays[name], dtype="<f4")
        hasher.update(f"{name}{array.shape}".encode())
        hasher.update(array.tobytes())
    hasher.update(json.dumps(metadata, sort_keys=True).encode())
    return hasher.hexdigest()
