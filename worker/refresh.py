"""The scoring agent: publishes a user's refreshed top-K after their state changes (debounced per
user, batched across users) and when new media arrive for recently active users.

New media are scored only against each active user's current top-K (the rest of the catalogue has
not changed for them), and a list is published only when a new item enters it.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
from faust.types import TopicT
from torch import Tensor

from mmrec.messages import RankedItem, Recommendations, Trigger
from mmrec.recommend import Ranked
from mmrec.user_state import UserState
from worker.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class ActiveUser:
    offsets: Tensor  # (P,)
    seen: tuple[int, ...]
    partition: int
    last_active: float  # unix seconds
    top: list[Ranked] | None = None  # the last list published


@dataclass(frozen=True)
class Due:
    trigger: Trigger
    produced_at: float | None  # Kafka timestamp of the triggering event, for the latency metric


class Refresher:
    def __init__(self, runtime: Runtime, topic: TopicT) -> None:
        self.runtime = runtime
        self.topic = topic
        self.settings = runtime.settings
        self.active: dict[str, ActiveUser] = {}
        self.dirty: dict[str, Due] = {}
        self._wake = asyncio.Event()

    def note(self, user_id: str, state: UserState, partition: int, trigger: Trigger, produced_at: float | None, applied: bool) -> None:
        """An event changed a user's state (or was a duplicate: then its output may have been lost
        in a crash, so refresh anyway): refresh them soon. The list names the latest applied event."""
        previous = self.active.get(user_id)
        self.active[user_id] = ActiveUser(state.offsets, state.seen, partition, time.time(), previous.top if previous else None)
        earlier = self.dirty.get(user_id)
        if earlier is None or applied:
            self.dirty[user_id] = Due(trigger, earlier.produced_at if earlier and earlier.produced_at else produced_at)
        self._wake.set()

    def forget(self, partitions: set[int]) -> None:
        """Drop users of partitions this worker no longer owns."""
        for user in [u for u, a in self.active.items() if a.partition in partitions]:
            del self.active[user]
            self.dirty.pop(user, None)
        self.runtime.metrics.users.set(len(self.active))

    async def run(self) -> None:
        """Forever: wait for dirty users, let their events settle, refresh them in batches."""
        debounce = self.settings.refresh_debounce_ms / 1000
        while True:
            await self._wake.wait()
            self._wake.clear()
            if debounce:
                await asyncio.sleep(debounce)
            while self.dirty:
                batch = list(self.dirty)[: self.settings.refresh_batch]
                dues = [self.dirty.pop(user) for user in batch]
                await self._refresh(batch, dues)
            self._evict_inactive()

    async def on_new_items(self, media_ids: list[str]) -> None:
        """New catalogue items: offer them to every active user's current list."""
        known = [u for u, a in self.active.items() if a.top is not None]
        for user in (u for u, a in self.active.items() if a.top is None):
            self.dirty.setdefault(user, Due(Trigger(kind="new_media", media_id=media_ids[0]), None))
        if not known or not media_ids:
            self._wake.set()
            return
        rows = self.runtime.catalogue.rows(media_ids)
        for start in range(0, len(known), self.settings.refresh_batch):
            users = known[start : start + self.settings.refresh_batch]
            offsets = torch.stack([self.active[u].offsets for u in users])
            scores = await self.runtime.on_model_thread(self.runtime.recommender.scores_for_rows, offsets, self.runtime.catalogue, rows)
            for user, row_scores in zip(users, scores.tolist()):
                active = self.active.get(user)
                if active is None or active.top is None:
                    continue
                merged = _merge(active.top, media_ids, row_scores, self.settings.top_k)
                if merged != active.top:
                    entered = next(r.media_id for r in merged if r not in active.top)
                    active.top = merged
                    await self._publish(user, merged, Due(Trigger(kind="new_media", media_id=entered), None))
        self._wake.set()

    async def _refresh(self, users: list[str], dues: list[Due]) -> None:
        actives = [self.active[u] for u in users]
        offsets = torch.stack([a.offsets for a in actives])
        seen = [a.seen for a in actives]
        tops = await self.runtime.on_model_thread(
            self.runtime.recommender.top_k, offsets, self.runtime.catalogue, self.settings.top_k, seen
        )
        for user, active, top, due in zip(users, actives, tops, dues):
            active.top = top
            await self._publish(user, top, due)

    async def _publish(self, user: str, top: list[Ranked], due: Due) -> None:
        message = Recommendations(
            user_id=user,
            items=[RankedItem(media_id=r.media_id, score=r.score) for r in top],
            model_version=f"{self.runtime.model_version}+{self.runtime.feature_version}",
            generated_at=datetime.now(timezone.utc),
            trigger=due.trigger,
        )
        await self.topic.send(key=user.encode(), value=message.to_json())
        metrics = self.runtime.metrics
        metrics.recommendations.labels(due.trigger.kind).inc()
        if due.produced_at is not None:
            metrics.refresh_latency.observe(max(0.0, time.time() - due.produced_at))

    def _evict_inactive(self) -> None:
        horizon = time.time() - self.settings.active_user_window_s
        for user in [u for u, a in self.active.items() if a.last_active < horizon and u not in self.dirty]:
            del self.active[user]
        self.runtime.metrics.users.set(len(self.active))


def _merge(top: list[Ranked], media_ids: list[str], scores: list[float], k: int) -> list[Ranked]:
    """The best k of a current list and newly scored items (a re-scored id replaces its old entry)."""
    fresh = {m: Ranked(m, s) for m, s in zip(media_ids, scores)}
    pool = [r for r in top if r.media_id not in fresh] + list(fresh.values())
    return sorted(pool, key=lambda r: r.score, reverse=True)[:k]
