"""The backbone is torchvision's pretrained MobileNetV2, frozen, tapped where its docstring says."""
from __future__ import annotations

import pytest
import torch

from mmrec.backbone import (
    STAGE_ENDS,
    MobileNetV2,
    backbone_id,
    default_taps,
    load_backbone,
    weights_path,
)
from mmrec.media import decode
from mmrec.samples import sample_image

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def backbone() -> MobileNetV2:
    return load_backbone(STAGE_ENDS)


def test_classifies_the_bundled_cat_photo_as_a_cat(backbone: MobileNetV2) -> None:
    frames = torch.from_numpy(decode(sample_image("chelsea.png").read_bytes(), 224).frames)
    with torch.inference_mode():
        probs = backbone.classify(frames.permute(0, 3, 1, 2)).softmax(dim=-1)[0]
    assert int(probs.argmax()) in IMAGENET_CATS
    assert float(probs[list(IMAGENET_CATS)].sum()) > 0.5


def test_a_non_cat_photo_is_not_a_cat(backbone: MobileNetV2) -> None:
    frames = torch.from_numpy(decode(sample_image("rocket.jpg").read_bytes(), 224).frames)
    with torch.inference_mode():
        top = int(backbone.classify(frames.permute(0, 3, 1, 2)).argmax())
    assert top not in IMAGENET_CATS


def test_module_names_match_torchvision_weights() -> None:
    official = torch.load(weights_path(), map_location="cpu", weights_only=True)
    ours = MobileNetV2().state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in official.items()}


def test_folded_batchnorm_computes_the_same_maps(backbone: MobileNetV2) -> None:
    plain = MobileNetV2(STAGE_ENDS)
    plain.load_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    plain.eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for ours, ref in zip(backbone(images), plain(images)):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_frozen_and_always_in_eval_mode(backbone: MobileNetV2) -> None:
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())


@pytest.mark.parametrize(
    ("n_layers", "taps"),
    [(1, (17,)), (2, (13, 17)), (3, (6, 13, 17)), (4, (3, 6, 13, 17)), (5, (3, 6, 13, 17, 18))],
)
def test_default_taps(n_layers: int, taps: tuple[int, ...]) -> None:
    assert default_taps(n_layers) == taps


def test_tap_shapes_follow_strides(backbone: MobileNetV2) -> None:
    with torch.inference_mode():
        maps = backbone(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 16, 24), (32, 8, 12), (96, 4, 6), (320, 2, 3), (1280, 2, 3)]
    assert backbone.channels == (24, 32, 96, 320, 1280)


@pytest.mark.parametrize("taps", [(), (5,), (13, 6), (6, 6)])
def test_rejects_taps_that_are_not_increasing_stage_ends(taps: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        MobileNetV2(taps)


@pytest.mark.parametrize("n_layers", [0, 6])
def test_rejects_n_layers_outside_the_stage_ends(n_layers: int) -> None:
    with pytest.raises(ValueError):
        default_taps(n_layers)


def test_refuses_weights_that_are_not_the_official_file(tmp_path) -> None:
    fake = tmp_path / "mobilenet_v2-b0353104.pth"
    data = bytearray(weights_path().read_bytes())
    data[-100] ^= 0xFF
    fake.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_backbone(path=fake)


def test_backbone_id() -> None:
    assert backbone_id((6, 13, 17), 224) == "mobilenet_v2-b0353104@224:6,13,17"
