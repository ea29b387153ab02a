"""Events of one user that wait, in order, for their media's features (the `pending` table's value).

Stored as JSON bytes: a list of {"value": original message (str), "partition", "offset",
"parked_at": unix seconds, "produced_at": the event's Kafka timestamp or null}. Once a user has a
waiting event, every later event of that user waits behind it, so the user's events are always
applied in their original order. A queue is looked at again when a wakeup for its user arrives on
the (co-partitioned) wakeups topic.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Parked:
    value: str  # the original interaction message (validated JSON)
    partition: int
    offset: int
    parked_at: float
    produced_at: float | None = None  # the event's Kafka timestamp: its latency counts the wait


def encode_pending(queue: list[Parked]) -> bytes:
    return json.dumps([asdict(p) for p in queue], separators=(",", ":")).encode()


def decode_pending(raw: bytes | None) -> list[Parked]:
    return [] if not raw else [Parked(**entry) for entry in json.loads(raw)]


@dataclass(frozen=True)
class Wakeup:
    """A message on the wakeups topic (key: user id, partition: the user's): look at their queue now."""

    user_id: str

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Wakeup:
        """Raises ValueError on anything but {"user_id": "<text>"}."""
        try:
            data = json.loads(raw) if raw is not None else None
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not JSON: {type(exc).__name__}") from None
        if not isinstance(data, dict) or not isinstance(data.get("user_id"), str):
            raise ValueError('expected {"user_id": "<text>"}')
        return cls(data["user_id"])
