"""One user's learned state and its compact binary form (no pickle).

Layout of the bytes, little-endian:
    header  magic b"MMU1" | n_layers u8 | kernel u8 | channels u16 | readout u8 | params u32 |
            version u64 | partition i32 | position i64 | updated_at f64 | recent count u16 |
            seen count u16
    recent  u64 x count      hashes of the most recently applied event ids (oldest first)
    seen    u64 x count      hashes of the media the user most recently engaged with (oldest first)
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
_HEADER = struct.Struct("<4sBBHBIQiqdHH")
_READOUTS = {"spanning": 0, "per_channel": 1}


class CorruptUserState(ValueError):
    """The bytes are not a user state of this model's shape."""


def id_hash(identifier: str) -> int:
    """A stable 64-bit hash of an event or media id (the same on every worker and run)."""
    return int.from_bytes(hashlib.blake2b(identifier.encode(), digest_size=8).digest(), "little")


def _push(ring: tuple[int, ...], value: int, keep: int) -> tuple[int, ...]:
    """The ring with value appended (moved to the end if present), holding at most `keep` entries."""
    kept = tuple(h for h in ring if h != value) + (value,)
    return kept[-keep:] if keep > 0 else ()


@dataclass
class UserState:
    """offsets (P,) and accum (P,) float32; version counts applied updates.

    partition/position: the source partition and offset of the last applied event (-1: none);
    recent: hashes of recently applied event ids. Together they make updates idempotent.
    seen: hashes of media the user engaged with recently, left out of their recommendations.
    """

    offsets: Tensor
    accum: Tensor
    version: int = 0
    partition: int = -1
    position: int = -1
    updated_at: float = 0.0
    recent: tuple[int, ...] = field(default_factory=tuple)
    seen: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def new(cls, cfg: ModelConfig) -> UserState:
        """A user with no events: exactly the cold-start prior."""
        size = ParamLayout(cfg).size
        return cls(offsets=torch.zeros(size), accum=torch.zeros(size))

    def has_applied(self, event_id: str, partition: int, position: int) -> bool:
        """True if this event was already applied (redelivered or re-sent)."""
        if partition == self.partition and 0 <= position <= self.position:
            return True
        return id_hash(event_id) in self.recent

    def remember_event(self, event_id: str, keep: int) -> tuple[int, ...]:
        """The recent-event ring after applying this event."""
        return _push(self.recent, id_hash(event_id), keep)

    def remember_media(self, media_id: str, keep: int) -> tuple[int, ...]:
        """The seen-media ring after an engagement with this media."""
        return _push(self.seen, id_hash(media_id), keep)


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
        len(state.seen),
    )
    rings = np.asarray((*state.recent, *state.seen), dtype="<u8").tobytes()
    offsets = state.offsets.detach().to(torch.float32).numpy().astype("<f4").tobytes()
    accum = state.accum.detach().to(torch.float32).numpy().astype("<f4").tobytes()
    return header + rings + offsets + accum


def decode_user_state(data: bytes, cfg: ModelConfig) -> UserState:
    """Inverse of encode_user_state; raises CorruptUserState on anything that does not fit."""
    if len(data) < _HEADER.size:
        raise CorruptUserState(f"user state too short: {len(data)} bytes")
    magic, n, m, d, readout, size, version, partition, position, updated_at, n_recent, n_seen = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptUserState(f"not a user state (magic {magic!r})")
    expected = (cfg.n_layers, cfg.kernel_size, cfg.channels, _READOUTS[cfg.readout], ParamLayout(cfg).size)
    if (n, m, d, readout, size) != expected:
        raise CorruptUserState(f"user state of another model shape {(n, m, d, readout, size)} != {expected}")
    body, count = _HEADER.size, n_recent + n_seen
    if len(data) != body + 8 * count + 8 * size:
        raise CorruptUserState(f"user state has {len(data)} bytes, expected {body + 8 * count + 8 * size}")
    rings = [int(h) for h in np.frombuffer(data, dtype="<u8", count=count, offset=body)]
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
        recent=tuple(rings[:n_recent]),
        seen=tuple(rings[n_recent:]),
    )
