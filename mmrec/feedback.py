"""What each kind of interaction event teaches the model: a label in [0, 1] and a loss weight."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EventKind(str, Enum):
    IMPRESSION = "impression"  # shown, not (yet) engaged with: a weak implicit negative
    CLICK = "click"
    LIKE = "like"
    SHARE = "share"
    SKIP = "skip"
    DISLIKE = "dislike"
    PLAY = "play"  # carries a watch fraction in [0, 1]


@dataclass(frozen=True)
class Feedback:
    label: float  # target probability of engagement
    weight: float  # loss weight of this example


@dataclass(frozen=True)
class FeedbackWeights:
    """Loss weight of each kind; labels are fixed by meaning (play: the watch fraction)."""

    impression: float = 0.3
    click: float = 1.0
    like: float = 2.0
    share: float = 3.0
    skip: float = 1.0
    dislike: float = 2.0
    play: float = 1.0
    sampled_negative: float = 0.5  # catalogue items sampled as negatives for a positive event

    def feedback(self, kind: EventKind, watch_fraction: float | None = None) -> Feedback:
        """Label and weight of one event. Raises ValueError on a play without a valid fraction."""
        if kind is EventKind.PLAY:
            if watch_fraction is None or not 0.0 <= watch_fraction <= 1.0:
                raise ValueError(f"a play event needs watch_fraction in [0, 1], got {watch_fraction!r}")
            return Feedback(label=float(watch_fraction), weight=self.play)
        positive = kind in (EventKind.CLICK, EventKind.LIKE, EventKind.SHARE)
        return Feedback(label=1.0 if positive else 0.0, weight=getattr(self, kind.value))


def is_positive(feedback: Feedback) -> bool:
    """Events that earn sampled negatives: engagement at least as likely as not."""
    return feedback.label >= 0.5
