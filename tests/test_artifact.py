"""Model artifacts: exact round trip, content digest, refusal of anything damaged or unexpected."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmrec.artifact import ArtifactError, ModelArtifact, load_artifact, save_artifact
from mmrec.features import FeatureVersion
from mmrec.model import ModelConfig, ParamLayout, SharedParams

CFG = ModelConfig(channels=4)


def artifact() -> ModelArtifact:
    gen = torch.Generator().manual_seed(0)
    shared = SharedParams.initial(CFG)
    shared.visual_bias = torch.randn(CFG.n_layers, CFG.channels, generator=gen)
    return ModelArtifact(
        cfg=CFG,
        feature_version=FeatureVersion("mobilenet_v2-b0353104@224:6,13,17", "pca-abc-d4"),
        shared=shared,
        item_ids=("a", "b", "c"),
        item_bias=torch.tensor([0.5, -0.25, 0.0]),
        item_factors=torch.zeros(3, 0),
        user_ids=("u1", "u2"),
        user_offsets=torch.randn(2, ParamLayout(CFG).size, generator=gen),
        notes={"events": "123"},
    )


def test_round_trip_and_version(tmp_path: Path):
    original = artifact()
    digest = save_artifact(original, tmp_path / "m.safetensors")
    loaded = load_artifact(tmp_path / "m.safetensors", expected_sha256=digest)
    assert loaded.version == original.version == digest[:12]
    assert loaded.cfg == CFG and loaded.item_ids == ("a", "b", "c") and loaded.user_ids == ("u1", "u2")
    assert torch.equal(loaded.user_offsets, original.user_offsets) and torch.equal(loaded.item_bias, original.item_bias)
    for name, tensor in original.shared.tensors().items():
        assert torch.equal(loaded.shared.tensors()[name], tensor), name
    assert loaded.notes == {"events": "123"}


def test_any_change_changes_the_version():
    a = artifact()
    b = ModelArtifact(**{**a.__dict__, "item_bias": a.item_bias + 1e-6})
    assert a.version != b.version


def test_damaged_or_foreign_files_are_refused(tmp_path: Path):
    path = tmp_path / "m.safetensors"
    save_artifact(artifact(), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside a tensor
    (tmp_path / "flipped.safetensors").write_bytes(data)
    with pytest.raises(ArtifactError, match="digest"):
        load_artifact(tmp_path / "flipped.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "junk.safetensors")
    with pytest.raises(ArtifactError, match="pinned"):
        load_artifact(path, expected_sha256="0" * 64)
