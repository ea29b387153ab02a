"""Media bytes -> square RGB frames for the backbone, with typed errors and resource limits.

The container is sniffed from magic bytes, never from a file name, and each decoder is told which
format to expect: Pillow for JPEG, PNG and WebP (first frame of an animation; EXIF orientation
applied; transparency composited on white), PyAV for MP4/MOV and Matroska/WebM video (display
rotation applied). Decoding is strict: Pillow's LOAD_TRUNCATED_IMAGES must be False (checked on
every call) and FFmpeg runs with err_detect=explode, so damaged media raise CorruptMedia instead of
decoding into gray or smeared pixels.

Resizing (fit_square): the long side is centre-cropped to at most 4:3 of the short side, then the
crop is resized to size x size (bilinear, antialiased). Why not letterbox: padding would become
grid cells of constant features that the per-user attention can weigh, so an item's score would
depend on its aspect ratio. Why not a square crop: a 16:9 frame would lose 44 % of its width.
Stretching a 4:3 crop to a square stays inside the aspect jitter (3:4..4:3) of the ImageNet
training recipe (RandomResizedCrop) the backbone was trained under; 3:2 and 16:9 lose 11 % and
25 % of the long side.
"""
from __future__ import annotations

import io
from bisect import bisect_right
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
from PIL import Image, ImageFile, ImageOps

MediaKind = Literal["image", "video"]
MAX_ASPECT = 4 / 3

_IMAGE_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}  # our name -> Pillow plugin
_VIDEO_DEMUXERS = {"mp4": "mov", "matroska": "matroska"}  # our name -> FFmpeg demuxer
_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180, 3: Image.Transpose.ROTATE_270}
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis")


class MediaError(Exception):
    """Media that cannot become features. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # args as given: the error pickles across processes
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class UnsupportedMedia(MediaError):
    """reason: unknown_format | unsupported_format | no_video_stream | unsupported_codec."""


class CorruptMedia(MediaError):
    """reason: empty | corrupt | truncated | no_frames."""


class MediaTooLarge(MediaError):
    """reason: too_many_bytes | too_many_pixels | too_long | too_many_frames."""


@dataclass(frozen=True)
class MediaLimits:
    """Refuse media beyond these before decoding pixels (header sizes count, not file size)."""

    max_bytes: int = 100_000_000
    max_pixels: int = 64_000_000  # per image or video frame
    max_video_seconds: float = 600.0
    max_video_frames: int = 36_000


@dataclass(frozen=True)
class DecodedMedia:
    """frames: (F, S, S, 3) uint8 RGB, F = 1 for an image; width/height: the source, upright."""

    kind: MediaKind
    format: str
    frames: np.ndarray
    width: int
    height: int


def sniff(data: bytes) -> tuple[MediaKind, str]:
    """(kind, format) from the first bytes; raises UnsupportedMedia or CorruptMedia('empty')."""
    if not data:
        raise CorruptMedia("empty", "no bytes")
    if data.startswith(b"\xff\xd8\xff"):
        return "image", "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image", "webp"
    if data[4:8] == b"ftyp":
        if data[8:12] in _HEIF_BRANDS:
            raise UnsupportedMedia("unsupported_format", f"HEIF/AVIF image (brand {data[8:12]!r})")
        return "video", "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "video", "matroska"
    for magic, name in ((b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP")):
        if data.startswith(magic):
            raise UnsupportedMedia("unsupported_format", f"{name} is not accepted (JPEG, PNG, WebP, MP4, WebM)")
    raise UnsupportedMedia("unknown_format", f"unrecognised leading bytes {data[:12].hex()}")


def decode(
    data: bytes,
    size: int,
    limits: MediaLimits = MediaLimits(),
    video_frames: int = 8,
    video_keyframes: int = 4,
) -> DecodedMedia:
    """Bytes -> DecodedMedia with frames (F, size, size, 3); F <= video_frames + video_keyframes."""
    if len(data) > limits.max_bytes:
        raise MediaTooLarge("too_many_bytes", f"{len(data)} bytes > {limits.max_bytes}")
    kind, fmt = sniff(data)
    if kind == "image":
        image, width, height = open_image(data, fmt, size, limits)
        return DecodedMedia("image", fmt, fit_square(image, size)[None], width, height)
    frames, width, height = _decode_video(data, fmt, size, limits, video_frames, video_keyframes)
    return DecodedMedia("video", fmt, frames, width, height)


def fit_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: centre crop to aspect <= 4:3, then stretch (module doc)."""
    w, h = image.size
    box = (0.0, 0.0, float(w), float(h))
    if w > h * MAX_ASPECT:
        keep = h * MAX_ASPECT
        box = ((w - keep) / 2, 0.0, (w + keep) / 2, float(h))
    elif h > w * MAX_ASPECT:
        keep = w * MAX_ASPECT
        box = (0.0, (h - keep) / 2, float(w), (h + keep) / 2)
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return np.array(resized, dtype=np.uint8)  # a writable copy: torch.from_numpy wants one


def open_image(data: bytes, fmt: str, size: int, limits: MediaLimits) -> tuple[Image.Image, int, int]:
    """Strictly decoded, upright RGB image and its upright source size (w, h). A JPEG may come back
    shrunk by 1/2..1/8 in the DCT domain, never below size x size."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; truncated images would decode as gray")
    try:
        image = Image.open(io.BytesIO(data), formats=[_IMAGE_FORMATS[fmt]])
        w, h = image.size
        if w * h > limits.max_pixels:
            raise MediaTooLarge("too_many_pixels", f"{w}x{h} {fmt} > {limits.max_pixels} pixels")
        if fmt == "jpeg":
            image.draft("RGB", (size, size))  # DCT-domain downscale by 1/2..1/8, never below size
        image.load()
        loaded = image.size
        image = ImageOps.exif_transpose(image)
        if image.size != loaded:
            w, h = h, w
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
        return image.convert("RGB"), w, h
    except Image.DecompressionBombError as exc:
        raise MediaTooLarge("too_many_pixels", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's decoder errors
        reason = "truncated" if "truncated" in str(exc) else "corrupt"
        raise CorruptMedia(reason, f"{fmt}: {exc}") from exc


def _sample_points(pts: list[int], keyframes: list[int], n_even: int, n_key: int) -> list[int]:
    """Presentation timestamps to decode: n_even centres of equal segments + <= n_key keyframes."""
    return sorted(set(_spread(pts, n_even)) | set(_spread(keyframes, n_key)))


def _spread(values: list[int], count: int) -> list[int]:
    """The middle element of each of min(count, len) equal segments of values."""
    n, m = len(values), min(count, len(values))
    return [values[(2 * i + 1) * n // (2 * m)] for i in range(m)]


def _decode_video(
    data: bytes, fmt: str, size: int, limits: MediaLimits, n_even: int, n_key: int
) -> tuple[np.ndarray, int, int]:
    try:
        with av.open(io.BytesIO(data), format=_VIDEO_DEMUXERS[fmt], metadata_errors="ignore") as container:
            if not container.streams.video:
                raise UnsupportedMedia("no_video_stream", f"{fmt} container without a video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            if ctx is None:
                raise UnsupportedMedia("unsupported_codec", f"no decoder for the video stream of this {fmt}")
            if ctx.width * ctx.height > limits.max_pixels:
                raise MediaTooLarge("too_many_pixels", f"{ctx.width}x{ctx.height} frames > {limits.max_pixels} pixels")
            if container.duration is not None and container.duration / 1e6 > limits.max_video_seconds:
                raise MediaTooLarge("too_long", f"{container.duration / 1e6:.1f} s > {limits.max_video_seconds} s")
            pts, keyframes = _index(container, stream, limits)
            targets = _sample_points(pts, keyframes, n_even, n_key)
            ctx.options = {"err_detect": "explode"}
            ctx.thread_type = "AUTO"  # frame threads: ~1.5x faster H.264 on 2 cores, same pixels
            frames, (width, height) = _decode_targets(container, stream, targets, keyframes, size)
            return np.stack(frames), width, height
    except av.error.DecoderNotFoundError as exc:
        raise UnsupportedMedia("unsupported_codec", str(exc)) from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise CorruptMedia("corrupt", f"{fmt}: {exc}") from exc


def _index(container: av.container.InputContainer, stream: av.VideoStream, limits: MediaLimits) -> tuple[list[int], list[int]]:
    """Demux without decoding: sorted presentation timestamps of all frames, and of keyframes."""
    pts: list[int] = []
    keyframes: list[int] = []
    for packet in container.demux(stream):
        if packet.is_corrupt:
            raise CorruptMedia("truncated", f"packet at pts {packet.pts} is incomplete")
        if packet.pts is None:
            continue  # the demuxer's end-of-stream flush packet
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
        if len(pts) > limits.max_video_frames:
            raise MediaTooLarge("too_many_frames", f"more than {limits.max_video_frames} frames")
    if not pts:
        raise CorruptMedia("no_frames", "the video stream holds no frames")
    if stream.frames and len(pts) < stream.frames:
        raise CorruptMedia("truncated", f"{len(pts)} of {stream.frames} frames present")
    pts.sort()
    seconds = float((pts[-1] - pts[0]) * stream.time_base)
    if seconds > limits.max_video_seconds:
        raise MediaTooLarge("too_long", f"{seconds:.1f} s > {limits.max_video_seconds} s")
    return pts, sorted(keyframes) or pts[:1]


def _decode_targets(
    container: av.container.InputContainer, stream: av.VideoStream, targets: list[int], keyframes: list[int], size: int
) -> tuple[list[np.ndarray], tuple[int, int]]:
    """Frames at `targets` fitted to size, and the upright source size. Seeks to the keyframe before
    a target whenever that skips a whole keyframe interval; a target never emitted is skipped."""
    out: list[np.ndarray] = []
    source = (0, 0)
    i = 0
    while i < len(targets):
        container.seek(_keyframe_before(keyframes, targets[i]), stream=stream, backward=True)
        for frame in container.decode(stream):
            if frame.is_corrupt:
                raise CorruptMedia("corrupt", f"frame at pts {frame.pts} decoded with errors")
            if frame.pts is None:
                continue
            while i < len(targets) and targets[i] < frame.pts:
                i += 1
            if i < len(targets) and targets[i] == frame.pts:
                upright = _upright(frame)
                source = upright.size
                out.append(fit_square(upright, size))
                i += 1
            if i == len(targets) or _keyframe_before(keyframes, targets[i]) > frame.pts:
                break
        else:
            break  # stream ended
    if not out:
        raise CorruptMedia("no_frames", "no sampled frame could be decoded")
    return out, source


def _keyframe_before(keyframes: list[int], pts: int) -> int:
    return keyframes[max(bisect_right(keyframes, pts) - 1, 0)]


def _upright(frame: av.VideoFrame) -> Image.Image:
    """The frame as displayed: its display-matrix rotation (counterclockwise degrees) applied."""
    image = frame.to_image()
    turns = round(frame.rotation / 90) % 4
    return image.transpose(_TURNS[turns]) if turns else image
