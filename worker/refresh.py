"""The scoring agent: publishes a user's refreshed top-K after their state changes (debounced per
user, batched across users) and when new media arrive for recently active users.

A refresh goes through the recommender, so large catalogues are ranked by the retrieval stage (a
surrogate shortlist re-scored exactly, mmrec.retrieval) and small ones exactly. Scoring runs on the
event loop's thread, like the online steps: on a thread of its own each of its torch ops waited for
the GIL from the busy loop, and the loop's steps for it (measured in `mmrec bench stream`, one
worker, 10k items: at 100 interactions/s p99 1.5 s with the thread, 0.17 s without; at 1000/s
offered, 72 answered/s with it, 104-123 without). A refresh batch is capped in (user, item) pairs
scored (`_PAIRS_PER_BATCH`), so it blocks the loop for tens of ms at most.

New media are scored only against each active user's current top-K (the rest of the catalogue has
not changed for them), and a list is published only when a new item enters it.

Per active user this holds ~1 KB: offsets and seen-media hashes as bytes, the published list as
catalogue rows and scores (numpy), not Python objects (docs/design.md, "Memory").
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch
from faust.types import TopicT

from mmrec.messages import RankedItem, Recommendations, Trigger
from mmrec.user_state import UserState
from worker.runtime import Runtime

log = logging.getLogger(__name__)

# Pairs scored exactly per refresh call (~10-50 ms on one core): at the default shortlist of 160,
# 25 users.
_PAIRS_PER_BATCH = 4096


@dataclass(slots=True)
class ActiveUser:
    offsets: bytes  # (P,) float32
    seen: bytes  # uint64 media id hashes
    partition: int
    last_active: float  # unix seconds
    top_rows: np.ndarray | None = None  # (k,) int64 catalogue rows of the last list published, best first
    top_scores: np.ndarray | None = None  # (k,) float32


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
        self._closed = False

    def note(self, user_id: str, state: UserState, partition: int, trigger: Trigger, produced_at: float | None, applied: bool) -> None:
        """An event changed a user's state (or was a duplicate: then its output may have been lost
        in a crash, so refresh anyway): refresh them soon. The list names the latest applied event."""
        previous = self.active.pop(user_id, None)  # re-inserted last: `active` is in order of last activity
        self.active[user_id] = ActiveUser(
            offsets=state.offsets.detach().to(torch.float32).numpy().tobytes(),
            seen=np.asarray(state.seen, dtype=np.uint64).tobytes(),
            partition=partition,
            last_active=time.time(),
            top_rows=previous.top_rows if previous else None,
            top_scores=previous.top_scores if previous else None,
        )
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

    def batch_size(self) -> int:
        """Users per refresh call: refresh_batch, fewer when each costs many exactly scored pairs."""
        pairs = self.runtime.recommender.pairs_per_user(len(self.runtime.catalogue), self.settings.top_k)
        return max(1, min(self.settings.refresh_batch, _PAIRS_PER_BATCH // max(1, pairs)))

    def close(self) -> None:
        """Publish nothing more: the app is shutting down and its producer stops next (a send after
        that crashes the app, measured: a SIGTERM exit code 1). Users still waiting for a refresh get
        theirs with their next event."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Until closed: wait for dirty users, let their events settle, refresh them in batches."""
        debounce = self.settings.refresh_debounce_ms / 1000
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if debounce:
                await asyncio.sleep(debounce)
            while self.dirty and not self._closed:
                await self._fill()
                batch = list(self.dirty)[: self.batch_size()]
                if not batch:  # every pending user's partition was revoked while it waited
                    break
                dues = [self.dirty.pop(user) for user in batch]
                await self._refresh(batch, dues)
            self._evict_inactive()

    async def _fill(self) -> None:
        """When behind (the longest-pending user's event is older than refresh_fill_ms), waits up to
        refresh_fill_ms more for a full batch: a refresh costs less per user in larger batches, so a
        worker that has fallen behind catches up; one that keeps up refreshes what is pending at once."""
        limit = self.settings.refresh_fill_ms / 1000
        oldest = next(iter(self.dirty.values()), None)
        if not limit or oldest is None or oldest.produced_at is None or time.time() - oldest.produced_at < limit:
            return
        deadline = time.monotonic() + limit
        while self.dirty and len(self.dirty) < self.batch_size() and not self._closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def on_new_items(self, media_ids: list[str]) -> None:
        """New catalogue items: offer them to every active user's current list."""
        known = [u for u, a in self.active.items() if a.top_rows is not None]
        for user in (u for u, a in self.active.items() if a.top_rows is None):
            self.dirty.setdefault(user, Due(Trigger(kind="new_media", media_id=media_ids[0]), None))
        if not known or not media_ids:
            self._wake.set()
            return
        catalogue = self.runtime.catalogue
        rows = catalogue.rows(media_ids)
        for start in range(0, len(known), self.settings.refresh_batch):
            users = known[start : start + self.settings.refresh_batch]
            offsets = _stack_offsets([self.active[u] for u in users])
            scores = self.runtime.recommender.scores_for_rows(offsets, catalogue, rows)
            for user, row_scores in zip(users, scores.numpy()):
                active = self.active.get(user)
                if active is None or active.top_rows is None or active.top_scores is None:
                    continue
                merged_rows, merged_scores = _merge(active.top_rows, active.top_scores, rows.numpy(), row_scores, self.settings.top_k)
                before = set(active.top_rows.tolist())
                entered = [r for r in merged_rows.tolist() if r not in before]
                if entered:
                    active.top_rows, active.top_scores = merged_rows, merged_scores
                    await self._publish(user, merged_rows, merged_scores, Due(Trigger(kind="new_media", media_id=catalogue.ids[entered[0]]), None))
        self._wake.set()

    async def _refresh(self, users: list[str], dues: list[Due]) -> None:
        actives = [self.active[u] for u in users]
        offsets = _stack_offsets(actives)
        seen = [np.frombuffer(a.seen, dtype=np.uint64).tolist() for a in actives]
        started = time.perf_counter()
        rows, scores = self.runtime.recommender.top_k_rows(offsets, self.runtime.catalogue, self.settings.top_k, seen)
        self.runtime.metrics.refresh_seconds.observe(time.perf_counter() - started)
        self.runtime.metrics.refreshed_users.inc(len(users))
        for user, active, user_rows, user_scores, due in zip(users, actives, rows.numpy(), scores.numpy(), dues):
            keep = np.isfinite(user_scores)
            active.top_rows, active.top_scores = user_rows[keep].copy(), user_scores[keep].astype(np.float32)
            await self._publish(user, active.top_rows, active.top_scores, due)

    async def _publish(self, user: str, rows: np.ndarray, scores: np.ndarray, due: Due) -> None:
        if self._closed:
            return
        ids = self.runtime.catalogue.ids
        message = Recommendations(
            user_id=user,
            items=[RankedItem(media_id=ids[r], score=s) for r, s in zip(rows.tolist(), scores.tolist())],
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
        """Drops users idle for longer than the window: walks `active` from its least recently
        active end and stops at the first recent one, so a call costs what it evicts, not the number
        of active users (measured: a full scan per refresh slowed a soak as users accumulated)."""
        horizon = time.time() - self.settings.active_user_window_s
        expired = []
        for user, active in self.active.items():
            if active.last_active >= horizon:
                break
            if user not in self.dirty:
                expired.append(user)
        for user in expired:
            del self.active[user]
        self.runtime.metrics.users.set(len(self.active))


def _stack_offsets(actives: list[ActiveUser]) -> torch.Tensor:
    """(U, P) float32 from the users' offset bytes."""
    return torch.from_numpy(np.stack([np.frombuffer(a.offsets, dtype=np.float32) for a in actives]))


def _merge(rows: np.ndarray, scores: np.ndarray, new_rows: np.ndarray, new_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of a current list and newly scored rows (a re-scored row replaces its old entry)."""
    keep = ~np.isin(rows, new_rows)
    pool_rows = np.concatenate([rows[keep], new_rows.astype(rows.dtype)])
    pool_scores = np.concatenate([scores[keep], new_scores.astype(np.float32)])
    order = np.argsort(-pool_scores, kind="stable")[:k]
    return pool_rows[order], pool_scores[order]
