"""PCA projection: whitening, nesting over d, safetensors round trip, hash check, shipped default,
and one fitted on a media folder that the settings name for the extractor."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from mmrec.backbone import STAGE_ENDS, WEIGHTS_NAME, load_backbone
from mmrec.cli import main
from mmrec.projection_fit import views
from mmrec.extraction import FeatureExtractor, feature_version
from mmrec.projection import (
    EPS_RATIO,
    LayerPCA,
    PCAFitter,
    Projection,
    ProjectionIntegrityError,
    default_projection_path,
)
from mmrec.samples import sample_image
from mmrec.settings import Settings


def correlated_maps(seed: int, channels: int = 12, batches: int = 4) -> list[torch.Tensor]:
    """Maps (8, C, 6, 5) whose channels mix 12 sources of very different scales."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(channels, channels, generator=gen)
    scales = torch.logspace(1, -1, channels)
    out = []
    for _ in range(batches):
        sources = torch.randn(8, channels, 6, 5, generator=gen) * scales[None, :, None, None]
        out.append(torch.einsum("dc,bchw->bdhw", mixing, sources) + 3.0)
    return out


def fitted(seed: int = 0) -> tuple[Projection, torch.Tensor]:
    fitter = PCAFitter()
    maps = correlated_maps(seed)
    for m in maps:
        fitter.update(7, m)
    samples = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in maps])  # (M, C)
    return fitter.finish({"weights": "test"}), samples


@pytest.mark.parametrize("d", [1, 4, 12])
def test_projection_whitens_the_fitted_samples(d: int) -> None:
    projection, x = fitted()
    weight, bias = projection.layer(7).affine(d)
    y = x @ weight.T + bias  # (M, d)
    assert weight.shape == (d, 12) and bias.shape == (d,)
    torch.testing.assert_close(y.mean(dim=0), torch.zeros(d), atol=1e-4, rtol=0)
    cov = (y - y.mean(dim=0)).T @ (y - y.mean(dim=0)) / y.shape[0]
    lam = projection.layer(7).variances[:d]
    expected = torch.diag(lam / (lam + EPS_RATIO * lam[0]))  # unit variance, bar the eps floor
    torch.testing.assert_close(cov, expected, atol=1e-3, rtol=0)
    assert float(expected.diagonal()[:4].min()) > 0.99


def test_components_are_sorted_orthonormal_and_nested_over_d() -> None:
    projection, _ = fitted()
    pca = projection.layer(7)
    assert torch.all(pca.variances[:-1] >= pca.variances[1:])
    torch.testing.assert_close(pca.components @ pca.components.T, torch.eye(12), atol=1e-5, rtol=0)
    w4, b4 = pca.affine(4)
    w8, b8 = pca.affine(8)
    assert torch.equal(w4, w8[:4]) and torch.equal(b4, b8[:4])
    assert projection.version(4) != projection.version(8)


def test_fitting_is_deterministic_and_data_dependent() -> None:
    assert fitted(0)[0].digest == fitted(0)[0].digest
    assert fitted(0)[0].digest != fitted(1)[0].digest


def test_d_beyond_the_fitted_components_is_refused() -> None:
    pca = fitted()[0].layer(7)
    for d in (0, 13):
        with pytest.raises(ValueError, match="12-channel"):
            pca.affine(d)


def test_round_trip_through_safetensors(tmp_path: Path) -> None:
    projection, _ = fitted()
    path = tmp_path / "p.safetensors"
    projection.save(path)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: a length, then a JSON header; no pickle
    loaded = Projection.load(path)
    assert loaded.digest == projection.digest and loaded.meta == projection.meta
    for name in ("mean", "components", "variances"):
        assert torch.equal(getattr(loaded.layer(7), name), getattr(projection.layer(7), name))


def test_a_file_whose_content_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    projection, _ = fitted()
    path = tmp_path / "p.safetensors"
    projection.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["block7.mean"][0] += 1e-3  # same recorded hash, altered content
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ProjectionIntegrityError, match="altered"):
        Projection.load(path)
    meta["samples"] = "{}"  # altered metadata is content too
    tensors["block7.mean"][0] -= 1e-3
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ProjectionIntegrityError):
        Projection.load(path)


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ProjectionIntegrityError, match="not a"):
        Projection.load(path)


def test_the_shipped_default_loads_and_fits_the_backbone() -> None:
    path = default_projection_path()
    assert path.stat().st_size < 600_000
    projection = Projection.load(path)
    assert projection.meta["weights"] == WEIGHTS_NAME
    channels = dict(zip(STAGE_ENDS, load_backbone(STAGE_ENDS).channels))
    assert {b: p.channels for b, p in projection.layers.items()} == channels
    assert {b: p.components.shape[0] for b, p in projection.layers.items()} == {3: 24, 6: 32, 13: 64, 17: 64, 18: 64}
    assert projection.version(8) == f"pca-{projection.digest[:12]}-d8"


def test_layer_affine_handles_a_zero_variance_direction() -> None:
    pca = LayerPCA(torch.zeros(2), torch.eye(2), torch.tensor([4.0, 0.0]))
    weight, _ = pca.affine(2)
    assert torch.isfinite(weight).all() and weight[0, 0] == pytest.approx(0.5, rel=1e-3)


def test_fit_projection_command_writes_a_loadable_projection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "small.safetensors"
    assert main(["fit-projection", "--out", str(out), "--input-size", "32"]) == 0
    projection = Projection.load(out)
    assert sorted(projection.layers) == list(STAGE_ENDS) and projection.meta["input_size"] == "32"
    assert json.loads(projection.meta["samples"])["17"] == 312  # 26 images x 12 views x 1x1 cells
    assert projection.version(8) in capsys.readouterr().out
    assert projection.digest != Projection.load(default_projection_path()).digest


def test_fitting_views_are_crops_and_their_mirror_images() -> None:
    ramp = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (150, 1, 3)))
    v = views(ramp, 16)
    assert v.shape == (12, 16, 16, 3)
    assert np.abs(v[1].astype(int) - v[0][:, ::-1]).max() <= 1  # whole image, mirrored (up to rounding)
    assert v[2][..., 0].mean() < v[4][..., 0].mean()  # left corner crop is darker than the right one


def test_fit_projection_on_a_media_folder_names_it_for_the_extractor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    media = tmp_path / "media"
    media.mkdir()
    for name in ("astronaut.png", "coffee.png", "chelsea.png"):
        shutil.copy(sample_image(name), media / name)
    (media / "notes.txt").write_text("not an image")
    out = tmp_path / "own.safetensors"
    assert main(["fit-projection", "--media", str(media), "--input-size", "32"]) == 2  # --out is required
    assert main(["fit-projection", "--media", str(media), "--out", str(out), "--input-size", "32"]) == 0
    printed = capsys.readouterr()
    assert "6 views of 3 images (1 files skipped)" in printed.out and "notes.txt (unknown_format)" in printed.err
    projection = Projection.load(out)
    assert json.loads(projection.meta["samples"])["17"] == 6 and projection.meta["source"] == "images of media x 2 views"
    assert projection.digest != Projection.load(default_projection_path()).digest
    settings = Settings(projection_path=out, input_size=32, device="cpu")
    extractor = FeatureExtractor(settings)
    assert extractor.version == feature_version(settings) != feature_version(Settings(input_size=32))
    assert extractor.version.projection == projection.version(settings.channels)
    with pytest.raises(ValueError, match="is not a file"):
        Settings(projection_path=tmp_path / "missing.safetensors")
