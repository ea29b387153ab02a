"""FeatureExtractor: shapes from settings, fp16 maps, video = mean of its frames, determinism."""
from __future__ import annotations

import functools
import threading

import pytest
import torch

from mmrec.backbone import MobileNetV2, default_taps, load_backbone
from mmrec.extraction import FeatureExtractor, feature_shapes, resolve_device
from mmrec.features import ItemFeatures
from mmrec.media import CorruptMedia, DecodedMedia, MediaTooLarge, UnsupportedMedia
from mmrec.projection import Projection, default_projection_path
from mmrec.samples import sample_image, sample_video
from mmrec.settings import Settings


@functools.cache
def backbone(n_layers: int) -> MobileNetV2:
    return load_backbone(default_taps(n_layers))


def extractor(**overrides: object) -> FeatureExtractor:
    settings = Settings(**{"input_size": 64, "device": "cpu", **overrides})
    return FeatureExtractor(settings, backbone=backbone(settings.n_layers))


def image_bytes(name: str = "chelsea.png") -> bytes:
    return sample_image(name).read_bytes()


def video_bytes(name: str = "carphone_pristine.mp4") -> bytes:
    return sample_video(name).read_bytes()


@pytest.mark.parametrize(
    ("overrides", "shapes"),
    [
        ({"input_size": 224}, [(8, 14, 14), (8, 14, 14), (8, 7, 7)]),  # the defaults
        ({"input_size": 224, "max_grid": 7}, [(8, 7, 7), (8, 7, 7), (8, 7, 7)]),
        ({"n_layers": 2, "channels": 16, "input_size": 96, "max_grid": 4}, [(16, 4, 4), (16, 3, 3)]),
        ({"n_layers": 5, "channels": 4, "max_grid": 128}, [(4, 16, 16), (4, 8, 8), (4, 4, 4), (4, 2, 2), (4, 2, 2)]),
        ({"n_layers": 1, "channels": 64}, [(64, 2, 2)]),
    ],
)
def test_map_shapes_follow_the_settings(overrides: dict[str, object], shapes: list[tuple[int, int, int]]) -> None:
    ex = extractor(**overrides)
    item = ex.extract("cat", image_bytes())
    assert [tuple(m.shape) for m in item.maps] == shapes == list(ex.shapes)
    assert list(feature_shapes(Settings(**{"input_size": 64, **overrides}))) == shapes  # without the CNN
    assert all(m.dtype == torch.float16 and torch.isfinite(m).all() for m in item.maps)
    assert item.nbytes == 2 * sum(c * h * w for c, h, w in shapes)
    assert item.version.backbone.startswith(f"mobilenet_v2-b0353104@{ex.input_size}:")
    assert item.version.projection.endswith(f"-d{ex.channels}")


def test_d_above_a_layers_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="32 principal components of block 6"):
        extractor(channels=33)  # block 6 has 32 channels
    assert extractor(channels=32).shapes[0] == (32, 8, 8)


def test_item_metadata() -> None:
    item = extractor().extract("cat-1", image_bytes())
    assert isinstance(item, ItemFeatures)
    assert (item.media_id, item.media_type, item.frames) == ("cat-1", "image", 1)
    assert item.extra == {"format": "png", "source": "451x300"}
    video = extractor().extract("clip", video_bytes())
    assert video.media_type == "video" and video.frames == 9 and video.extra["format"] == "mp4"


def test_projected_maps_are_roughly_whitened_on_natural_images() -> None:
    item = extractor(input_size=224).extract("cat", image_bytes())
    for m in item.maps:
        std = float(m.float().std())
        assert 0.2 < std < 5.0  # one image, so only roughly unit variance


def test_video_features_are_the_mean_of_its_sampled_frames() -> None:
    ex = extractor()
    data = video_bytes("bikes.mp4")
    item = ex.extract("bikes", data)
    frames = ex.decode(data).frames
    assert item.frames == frames.shape[0] == 12
    per_frame = ex.frame_maps(frames)  # N x (F, d, h, w) float32
    for stored, maps in zip(item.maps, per_frame):
        torch.testing.assert_close(stored, maps.mean(dim=0).half(), rtol=1e-3, atol=1e-3)
        assert not torch.allclose(stored.float(), maps[0], atol=1e-2)  # not just one frame
    other = ex.extract("carphone", video_bytes())
    assert all(not torch.allclose(a.float(), b.float(), atol=0.1) for a, b in zip(item.maps, other.maps))


@pytest.mark.parametrize("input_size", [64, 224])
def test_same_bytes_give_bit_identical_features_in_any_batch(input_size: int) -> None:
    ex = extractor(extract_batch_size=4, input_size=input_size)
    alone = ex.extract("cat", image_bytes())
    again = extractor(extract_batch_size=4, input_size=input_size).extract("cat", image_bytes())
    mixed = ex.extract_many([("rocket", image_bytes("rocket.jpg")), ("cat", image_bytes())])
    after_video = ex.extract_many([("clip", video_bytes()), ("coins", image_bytes("coins.png")), ("cat", image_bytes())])
    for other in (again, mixed[1], after_video[2]):  # positions 0, 1 and 2 of its batch
        assert isinstance(other, ItemFeatures)
        assert all(torch.equal(a, b) for a, b in zip(alone.maps, other.maps))
    assert alone.version == again.version


def test_a_bad_item_fails_alone_with_its_typed_error() -> None:
    ex = extractor(max_pixels=120_000)
    results = ex.extract_many(
        [
            ("cat", image_bytes()),  # 451x300 > the limit; coins.png is 384x303
            ("junk", b"not media at all"),
            ("cut", image_bytes("coins.png")[:5000]),
            ("clip", video_bytes()),
        ]
    )
    assert [type(r) for r in results] == [MediaTooLarge, UnsupportedMedia, CorruptMedia, ItemFeatures]
    with pytest.raises(CorruptMedia):
        ex.extract("cut", image_bytes("coins.png")[:5000])


def test_several_decoding_threads_give_the_same_results_in_order() -> None:
    items = [
        ("cat", image_bytes()),
        ("junk", b"not media at all"),
        ("clip", video_bytes()),
        ("cut", image_bytes("coins.png")[:5000]),
        ("rocket", image_bytes("rocket.jpg")),
    ]
    serial = extractor(decode_threads=1, extract_batch_size=2).extract_many(items)
    threaded = extractor(decode_threads=3, extract_batch_size=2).extract_many(items)
    assert [type(r) for r in threaded] == [ItemFeatures, UnsupportedMedia, ItemFeatures, CorruptMedia, ItemFeatures]
    for one, other in zip(serial, threaded):
        if isinstance(one, ItemFeatures):
            assert isinstance(other, ItemFeatures) and other.media_id == one.media_id
            assert all(torch.equal(a, b) for a, b in zip(one.maps, other.maps))
        else:
            assert str(other) == str(one)


def test_the_media_of_one_call_are_decoded_at_once() -> None:
    """Each decode waits at a barrier for the other: one after another, they would time out."""
    meeting = threading.Barrier(2, timeout=10)

    class Meeting(FeatureExtractor):
        def decode(self, data: bytes) -> DecodedMedia:
            meeting.wait()
            return super().decode(data)

    settings = Settings(input_size=64, device="cpu", decode_threads=2)
    results = Meeting(settings, backbone=backbone(settings.n_layers)).extract_many([("cat", image_bytes()), ("rocket", image_bytes("rocket.jpg"))])
    assert [type(r) for r in results] == [ItemFeatures, ItemFeatures]


def test_a_projection_for_other_weights_is_refused() -> None:
    shipped = Projection.load(default_projection_path())
    foreign = Projection(shipped.layers, {**shipped.meta, "weights": "resnet50-0676ba61"})
    with pytest.raises(ValueError, match="resnet50"):
        FeatureExtractor(Settings(input_size=64, device="cpu"), projection=foreign, backbone=backbone(3))


def test_device_auto_picks_cuda_only_when_present() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if torch.cuda.is_available():
        on_gpu = extractor(device="cuda").extract("cat", image_bytes())
        on_cpu = extractor().extract("cat", image_bytes())
        for a, b in zip(on_gpu.maps, on_cpu.maps):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    else:
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
