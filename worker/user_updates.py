"""The internal `mmrec.user-updates` topic: how a learn-role worker tells the score role that a user's
state changed, and which event changed it (the recommendations name that event as their trigger).

The learn role's user-state changelog alone cannot serve: it carries the state bytes but not the
triggering event id nor the event's Kafka timestamp (for the interaction-to-recommendation latency).

Record (key: user id; sent to the partition of the interaction, so it is co-partitioned with it):

    b"MMU1" | flags u8 (bit 0: applied, bit 1: has produced_at) | produced_at f64 (unix s)
            | trigger length u16 | trigger JSON (mmrec.messages.Trigger) | user state (mmrec/user_state.py)

Decoding is strict: a bad magic, length or trigger raises CorruptUserUpdate; the state bytes are
checked by decode_user_state where they are used.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from faust.types import TopicT
from pydantic import ValidationError

from mmrec.messages import Trigger
from mmrec.model import ModelConfig
from mmrec.user_state import UserState, encode_user_state
from worker.metrics import Metrics

MAGIC = b"MMU1"
_HEAD = struct.Struct("<4sBdH")
_APPLIED, _HAS_PRODUCED_AT = 1, 2


class CorruptUserUpdate(ValueError):
    """A user-update record that does not follow the format above."""


@dataclass(frozen=True)
class UserUpdate:
    trigger: Trigger
    produced_at: float | None  # Kafka timestamp of the triggering interaction
    applied: bool  # False: a duplicate event (its output may have been lost in a crash: refresh anyway)
    state: bytes  # mmrec/user_state.py encoding


def encode_user_update(update: UserUpdate) -> bytes:
    trigger = update.trigger.model_dump_json(exclude_none=True).encode()
    flags = (_APPLIED if update.applied else 0) | (_HAS_PRODUCED_AT if update.produced_at is not None else 0)
    produced_at = update.produced_at if update.produced_at is not None else 0.0
    return _HEAD.pack(MAGIC, flags, produced_at, len(trigger)) + trigger + update.state


def decode_user_update(data: bytes) -> UserUpdate:
    if len(data) < _HEAD.size:
        raise CorruptUserUpdate(f"user update too short: {len(data)} bytes")
    magic, flags, produced_at, trigger_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CorruptUserUpdate(f"not a user update (magic {magic!r})")
    if flags & ~(_APPLIED | _HAS_PRODUCED_AT):
        raise CorruptUserUpdate(f"unknown flags {flags:#x}")
    end = _HEAD.size + trigger_len
    if len(data) <= end:
        raise CorruptUserUpdate(f"user update of {len(data)} bytes has no state after its {trigger_len}-byte trigger")
    try:
        trigger = Trigger.model_validate_json(data[_HEAD.size : end])
    except ValidationError as exc:
        raise CorruptUserUpdate(f"bad trigger: {exc.errors()[0]['msg']}") from None
    if flags & _HAS_PRODUCED_AT and not math.isfinite(produced_at):
        raise CorruptUserUpdate("produced_at is not finite")
    return UserUpdate(trigger, produced_at if flags & _HAS_PRODUCED_AT else None, bool(flags & _APPLIED), data[end:])


class UserUpdatePublisher:
    """Stands in for the Refresher in a learn-role worker: the same note() call, but the user's new
    state goes to the user-updates topic for the score role instead of being scored here.

    send_soon puts the record in faust's producer buffer, which is flushed before the source offset is
    committed (like the table's changelog writes): at-least-once, the score role skips nothing.
    """

    def __init__(self, topic: TopicT, cfg: ModelConfig, metrics: Metrics) -> None:
        self.topic = topic
        self.cfg = cfg
        self.metrics = metrics

    def note(self, user_id: str, state: UserState, partition: int, trigger: Trigger, produced_at: float | None, applied: bool) -> None:
        value = encode_user_update(UserUpdate(trigger, produced_at, applied, encode_user_state(state, self.cfg)))
        self.topic.send_soon(key=user_id.encode(), value=value, partition=partition)
        self.metrics.user_updates.inc()
