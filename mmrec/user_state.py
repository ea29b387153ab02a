"""One user's learned state and its compact binary form (no pickle).

Layout of the bytes, little-endian:
    header  magic b"MMU1" | n_layers u8 | kernel u8 | channels u16 | readout u8 | params u32 |
            version u64 | partition i32 | position i64 | updated_at f64 | recent count u16
    recent  u64 x count      hashes of the most recently applied event ids (oldest first)
    offsets f32 x params     the user's offsets from the shared prior (see model.ParamLayout)
    accum   f32 x params     Adagrad accumulators of the online step
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mmrec.model import ModelConfig, ParamLayout

MAGIC = b"MMU1"
_HEADER = struct.Struct("<4sBBHBIQiqdH")
_READOUTS = {"spanning": 0, "per_channel": 1}


class CorruptUserState(ValueError):
    """The bytes are not a user state of this model's shape."""


def event_hash(event_id: str) -> int:
    """A stable 64-bit hash of an event id (the same on every worker and run)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "little")


@dataclass
class UserState:
    """offsets (P,) and accum (P,) float32; version counts applied updates.

    partition/position: the source partition and offset of the last applied event (-1: none);
    recent: hashes of recently applied event ids. Together they make updates idempotent.
    """

    offsets: Tensor
    accum: Tensor
    version: int = 0
    partition: int = -1
    position: int = -1
    updated_at: float = 0.0
    recent: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def new(cls, cfg: ModelConfig) -> UserState:
        """A user with no events: exactly the cold-start prior."""
        size = ParamLayout(cfg).size
        return cls(offsets=torch.zeros(size), accum=torch.zeros(size))

    def has_applied(self, event_id: str, partition: int, position: int) -> bool:
        """True if this event was already applied (redelivered or re-sent)."""
        if partition == self.partition and 0 <= position <= self.position:
            return True
        return event_hash(event_id) in self.recent

    def remember(self, event_id: str, keep: int) -> tuple[int, ...]:
        """The recent-event ring after applying this event, holding at most `keep` hashes."""
        ring = (*self.recent, event_hash(event_id))
        return ring[-keep:] if keep > 0 else ()


def encode_user_state(state: UserState, cfg: ModelConfig) -> bytes:
    size = ParamLayout(cfg).size
    if state.offsets.shape != (size,) or state.accum.shape != (size,):
        raise ValueError(f"user state does not fit the model: expected ({size},) tensors")
    header = _HEADER.pack(
        MAGIC,
        cfg.n_layers,
        cfg.kernel_size,
        cfg.channels,
        _READOUTS[cfg.readout],
        size,
        state.version,
        state.partition,
        state.position,
        state.updated_at,
        len(state.recent),
    )
    recent = np.asarray(state.recent, dtype="<u8").tobytes()
    offsets = state.offsets.detach().to(torch.float32).numpy().astype("<f4").tobytes()
    accum = state.accum.detach().to(torch.float32).numpy().astype("<f4").tobytes()
    return header + recent + offsets + accum


def decode_user_state(data: bytes, cfg: ModelConfig) -> UserState:
    """Inverse of encode_user_state; raises CorruptUserState on anything that does not fit."""
    if len(data) < _HEADER.size:
        raise CorruptUserState(f"user state too short: {len(data)} bytes")
    magic, n, m, d, readout, size, version, partition, position, updated_at, count = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptUserState(f"not a user state (magic {magic!r})")
    expected = (cfg.n_layers, cfg.kernel_size, cfg.channels, _READOUTS[cfg.readout], ParamLayout(cfg).size)
    if (n, m, d, readout, size) != expected:
        raise CorruptUserState(f"user state of another model shape {(n, m, d, readout, size)} != {expected}")
    body = _HEADER.size
    if len(data) != body + 8 * count + 8 * size:
        raise CorruptUserState(f"user state has {len(data)} bytes, expected {body + 8 * count + 8 * size}")
    recent = np.frombuffer(data, dtype="<u8", count=count, offset=body)
    floats = np.frombuffer(data, dtype="<f4", count=2 * size, offset=body + 8 * count).copy()
    if not np.isfinite(floats).all():
        raise CorruptUserState("user state holds non-finite numbers")
    tensor = torch.from_numpy(floats)
    return UserState(
        offsets=tensor[:size],
        accum=tensor[size:],
        version=version,
        partition=partition,
        position=position,
        updated_at=updated_at,
        recent=tuple(int(h) for h in recent),
    )
