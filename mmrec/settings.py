"""The one validated settings object, read from MMREC_* environment variables.

Nothing reads the environment anywhere else: build a Settings once at the entry point and pass it
(or the parts a component needs) down.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mmrec.model import ModelConfig, Readout


class ModelSettings(BaseModel):
    n_layers: int = Field(3, ge=1, le=5, description="N, conv layers of the backbone tapped for features.")
    kernel_size: int = Field(3, ge=1, le=7, description="m, width of the per-user interest and attention kernels (odd).")
    channels: int = Field(8, ge=1, le=64, description="d, channels per layer after the channel projection (at most the narrowest tapped layer has: 32 for N = 2-3, 24 for N = 4-5).")
    pool: int = Field(2, ge=1, le=4, description="p, max-pool window and stride (claim 4).")
    readout: Readout = Field("spanning", description="'spanning' (kernel = user channel factor x K) or 'per_channel' (K per channel, max over channels).")


class ExtractionSettings(BaseModel):
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the CNN runs; 'auto' takes CUDA when present.")
    input_size: int = Field(224, ge=32, le=1024, description="Square input side the backbone sees, in pixels.")
    max_grid: int = Field(14, ge=1, le=128, description="Stored maps are average-pooled to at most this many cells per side.")
    extract_batch_size: int = Field(8, ge=1, le=1024, description="Images (or video frames) per CNN forward pass; a part-filled pass is padded to this size so features do not depend on batch company (1 = lowest latency).")
    video_frames: int = Field(8, ge=1, le=64, description="Evenly spaced frames sampled from a video.")
    video_keyframes: int = Field(4, ge=0, le=64, description="Keyframes added to the evenly spaced ones (at most).")
    max_media_bytes: int = Field(100_000_000, ge=1, description="Media larger than this many bytes are refused (MediaTooLarge).")
    max_pixels: int = Field(64_000_000, ge=1, description="Images or video frames whose header declares more pixels are refused before decoding (decompression bombs).")
    max_video_seconds: float = Field(600.0, gt=0, description="Videos longer than this are refused.")
    max_video_frames: int = Field(36_000, ge=1, description="Videos with more frames than this are refused.")


class Settings(ModelSettings, ExtractionSettings, BaseSettings):
    """Every setting of mmrec. Environment: MMREC_<NAME> (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="MMREC_", extra="ignore", frozen=True)

    data_dir: Path = Field(Path("var"), description="Local state: feature store, projection, model artifacts.")

    def scorer_config(self) -> ModelConfig:
        return ModelConfig(
            n_layers=self.n_layers,
            kernel_size=self.kernel_size,
            channels=self.channels,
            pool=self.pool,
            readout=self.readout,
        )
