"""Decoding: formats by magic bytes, orientation, the square fit, video sampling, typed errors."""
from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageFile

from mmrec.media import (
    CorruptMedia,
    MediaError,
    MediaLimits,
    MediaTooLarge,
    UnsupportedMedia,
    decode,
    fit_square,
    sniff,
)
from mmrec.samples import sample_image, sample_video

S = 32  # input side for tests that are not about the backbone


def two_colour(width: int = 64, height: int = 32) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def encoded(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_clip(path: Path, fmt: str, codec: str, frames: int = 6, rotation: int | None = None) -> bytes:
    """A small clip whose frame i is uniformly gray 40 * i (64x32 px, 10 fps)."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            image = np.asarray(two_colour()) if rotation is not None else np.full((32, 64, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path.read_bytes()


# --- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_each_image_format_decodes_to_the_same_picture(fmt: str) -> None:
    cat = Image.open(sample_image("chelsea.png")).convert("RGB")
    reference = fit_square(cat, S).astype(int)
    media = decode(encoded(cat, fmt, quality=95), S)
    assert media.kind == "image" and media.format == fmt.lower()
    assert media.frames.shape == (1, S, S, 3) and media.frames.dtype == np.uint8
    assert (media.width, media.height) == cat.size
    # JPEG decodes in the DCT domain at 1/8 scale for so small a target: close, not equal
    assert np.abs(media.frames[0].astype(int) - reference).mean() < (6 if fmt == "JPEG" else 1)


def test_format_comes_from_magic_bytes_not_the_name(tmp_path: Path) -> None:
    misnamed = tmp_path / "photo.jpg"
    misnamed.write_bytes(encoded(two_colour(), "PNG"))
    assert sniff(misnamed.read_bytes()) == ("image", "png")
    assert decode(misnamed.read_bytes(), S).format == "png"
    assert sniff(sample_video("bikes.mp4").read_bytes()) == ("video", "mp4")


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; display turns it 90 degrees clockwise
    media = decode(encoded(two_colour(), "JPEG", exif=exif, quality=95), S)
    assert (media.width, media.height) == (32, 64)
    frame = media.frames[0].astype(int)
    assert frame[2, S // 2, 0] > 200 and frame[-3, S // 2, 2] > 200  # red on top, blue below


def test_transparency_is_composited_on_white() -> None:
    media = decode(encoded(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"), S)
    assert media.frames.min() == 255


def test_fit_square_crops_the_long_side_to_four_thirds_then_stretches() -> None:
    ramp = np.tile((np.arange(400) // 2).astype(np.uint8)[None, :, None], (100, 1, 3))  # R = x / 2
    out = fit_square(Image.fromarray(ramp), 40).astype(int)[..., 0]
    kept = 100 * 4 / 3  # of 400 columns, centred: x in [133.3, 266.7]
    assert abs(out[:, 0].mean() - (200 - kept / 2) / 2) < 2
    assert abs(out[:, -1].mean() - (200 + kept / 2) / 2) < 2
    square = np.asarray(two_colour(60, 48))  # 5:4 is within 4:3: nothing cropped
    assert (fit_square(Image.fromarray(square), 20)[:, 0] == (255, 0, 0)).all()


# --- video ---------------------------------------------------------------------------------------

def reference_frames(data: bytes, indices: list[int], size: int) -> np.ndarray:
    """Frames at the given presentation indices, by decoding every frame in order."""
    with av.open(io.BytesIO(data)) as container:
        frames = sorted(container.decode(video=0), key=lambda f: f.pts)
        return np.stack([fit_square(frames[i].to_image(), size) for i in indices])


def test_video_samples_evenly_spaced_frames_exactly() -> None:
    data = sample_video("bikes.mp4").read_bytes()  # 250 frames, 6 keyframes: sampling must seek
    media = decode(data, S, video_frames=4, video_keyframes=0)
    assert media.kind == "video" and media.frames.shape == (4, S, S, 3)
    assert np.array_equal(media.frames, reference_frames(data, [31, 93, 156, 218], S))


def test_video_adds_keyframes_and_caps_the_count() -> None:
    data = sample_video("bikes.mp4").read_bytes()
    assert decode(data, S, video_frames=8, video_keyframes=0).frames.shape[0] == 8
    assert 8 < decode(data, S, video_frames=8, video_keyframes=4).frames.shape[0] <= 12
    assert decode(data, S, video_frames=1, video_keyframes=64).frames.shape[0] == 7  # 6 keyframes + 1


def test_short_webm_gives_each_frame_once(tmp_path: Path) -> None:
    data = write_clip(tmp_path / "clip.webm", "webm", "libvpx-vp9", frames=5)
    media = decode(data, S, video_frames=8, video_keyframes=4)
    assert media.format == "matroska" and media.frames.shape[0] == 5
    grays = media.frames.mean(axis=(1, 2, 3))
    assert np.all(np.abs(grays - 40 * np.arange(5)) < 6)


def test_video_display_rotation_is_applied(tmp_path: Path) -> None:
    media = decode(write_clip(tmp_path / "rotated.mp4", "mp4", "libx264", rotation=90), S)
    assert (media.width, media.height) == (32, 64)
    frame = media.frames[0].astype(int)  # turned 90 degrees counterclockwise: blue on top
    assert frame[2, S // 2, 2] > 200 and frame[-3, S // 2, 0] > 200


# --- errors --------------------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height RGB pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def assert_raises(kind: type[MediaError], reason: str, data: bytes, **kwargs: object) -> None:
    with pytest.raises(kind) as info:
        decode(data, S, **kwargs)
    assert info.value.reason == reason and info.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_raises_instead_of_decoding_gray(fmt: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encoded(Image.open(sample_image("chelsea.png")).convert("RGB"), fmt)
    with pytest.raises(CorruptMedia):
        decode(data[: len(data) // 2], S)


def test_refuses_to_run_when_truncated_images_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        decode(encoded(two_colour(), "PNG"), S)


def test_corrupt_bytes_raise_typed_errors() -> None:
    rng = np.random.default_rng(0)
    assert_raises(CorruptMedia, "corrupt", b"\xff\xd8\xff\xe0" + rng.bytes(2000))
    assert_raises(CorruptMedia, "corrupt", b"\x1a\x45\xdf\xa3" + rng.bytes(2000))
    assert_raises(CorruptMedia, "empty", b"")
    assert_raises(UnsupportedMedia, "unknown_format", rng.bytes(2000))


def test_bit_flipped_video_raises() -> None:
    data = bytearray(sample_video("bikes.mp4").read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(2000, len(data) - 10_000, 50):
        data[i] ^= 0xFF
    with pytest.raises(CorruptMedia):
        decode(bytes(data), S)


def test_truncated_mp4_raises(tmp_path: Path) -> None:
    data = sample_video("bikes.mp4").read_bytes()  # index (moov) at the end
    assert_raises(CorruptMedia, "corrupt", data[: len(data) // 2])
    faststart = tmp_path / "faststart.mp4"  # index first: the cut loses frames, not the index
    with av.open(io.BytesIO(data)) as src, av.open(str(faststart), "w", format="mp4", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    whole = faststart.read_bytes()
    assert decode(whole, S).frames.shape[0] == 12
    assert_raises(CorruptMedia, "truncated", whole[: int(len(whole) * 0.9)])


@pytest.mark.parametrize(
    ("data", "name"),
    [(b"GIF89a" + bytes(100), "GIF"), (b"\0\0\0\x1cftypheic" + bytes(100), "HEIF"), (b"II*\0" + bytes(100), "TIFF")],
)
def test_unsupported_formats(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedMedia, match=name) as info:
        decode(data, S)
    assert info.value.reason == "unsupported_format"


def test_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = png_header_only(100_000, 100_000)  # 10 G pixels declared in 100 bytes
    assert len(bomb) < 200
    assert_raises(MediaTooLarge, "too_many_pixels", bomb)
    assert_raises(MediaTooLarge, "too_many_pixels", png_header_only(4000, 4000), limits=MediaLimits(max_pixels=10**7))


def test_size_limits() -> None:
    png = encoded(two_colour(), "PNG")
    assert_raises(MediaTooLarge, "too_many_bytes", png, limits=MediaLimits(max_bytes=len(png) - 1))
    assert_raises(MediaTooLarge, "too_many_pixels", png, limits=MediaLimits(max_pixels=64 * 32 - 1))
    clip = sample_video("carphone_distorted.mp4").read_bytes()  # 4 s, 120 frames of 176x144
    assert_raises(MediaTooLarge, "too_long", clip, limits=MediaLimits(max_video_seconds=2))
    assert_raises(MediaTooLarge, "too_many_frames", clip, limits=MediaLimits(max_video_frames=100))
    assert_raises(MediaTooLarge, "too_many_pixels", clip, limits=MediaLimits(max_pixels=176 * 144 - 1))


def test_errors_carry_reason_and_message_across_processes() -> None:
    error = CorruptMedia("truncated", "12 of 250 frames present")
    assert isinstance(error, MediaError) and error.reason == "truncated"
    assert str(error) == "truncated: 12 of 250 frames present"
    copy = pickle.loads(pickle.dumps(error))  # what a process pool does with a raised error
    assert type(copy) is CorruptMedia and (copy.reason, copy.message) == (error.reason, error.message)
