"""The learning agents: each interaction takes one online step on its user's state (a faust Table
partitioned by user id); events whose media has no features yet wait in order and are retried.

At-least-once delivery plus idempotent updates: a user's state records the partition and offset of
the last applied event and the ids of recent ones, so a redelivered or re-sent event is a no-op.

The two agents (interactions and wakeups) run concurrently on the same partitions, and each step
awaits the model thread: every read-modify-write of one user's state and queue holds that user's
lock, or an event applied or parked by one agent is overwritten by the other (measured: events lost
without any crash). Neither agent handles an event before the catalogue has read the features topic
up to where it stood at start, so negatives are drawn from the same items as a replay would.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faust

from mmrec.messages import Interaction, InvalidMessage, Trigger, parse
from mmrec.user_state import UserState, decode_user_state, encode_user_state
from worker.app import Tables, Topics
from worker.dead_letters import DeadLetters
from worker.pending import Parked, Wakeup, decode_pending, encode_pending
from worker.refresh import Refresher
from worker.runtime import Runtime


class Learning:
    """State and steps shared by the interactions agent and the wakeups agent.

    A user's waiting queue is looked at when a wakeup for them arrives: sent when an event parks,
    when a media some user here waits for arrives, and by a periodic sweep over all queues (which
    also heals wakeups lost in a crash and dead-letters events that waited too long).
    """

    def __init__(self, runtime: Runtime, tables: Tables, topics: Topics, dead: DeadLetters, refresher: Refresher) -> None:
        self.runtime = runtime
        self.tables = tables
        self.topics = topics
        self.dead = dead
        self.refresher = refresher
        self.settings = runtime.settings
        self.waiting: defaultdict[str, set[tuple[str, int]]] = defaultdict(set)  # media -> (user, partition)
        self.catalogue_ready = asyncio.Event()  # set once the catalogue sync has caught up (service.py)
        self._locks: dict[bytes, tuple[asyncio.Lock, int]] = {}  # user -> (lock, holders and waiters)

    @asynccontextmanager
    async def user_lock(self, user: bytes) -> AsyncIterator[None]:
        """Serialises the agents' work on one user (see the module doc); the lock lives while used."""
        lock, users = self._locks.get(user) or (asyncio.Lock(), 0)
        self._locks[user] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[user]
            if users == 1:
                del self._locks[user]
            else:
                self._locks[user] = (lock, users - 1)

    def state_of(self, user: bytes) -> UserState:
        raw = self.tables.user_state.get(user)
        return self.runtime.initial_state(user.decode()) if raw is None else decode_user_state(raw, self.runtime.cfg)

    async def apply(self, user: bytes, interaction: Interaction, partition: int, offset: int, produced_at: float | None) -> None:
        """One online step (inside the stream iteration of the user's partition)."""
        started = time.perf_counter()
        result = await self.runtime.on_model_thread(self.runtime.interactions.apply, self.state_of(user), interaction, partition, offset)
        metrics = self.runtime.metrics
        if result.applied:
            self.tables.user_state[user] = encode_user_state(result.state, self.runtime.cfg)
            metrics.step_seconds.observe(time.perf_counter() - started)
            metrics.step_loss.observe(result.loss)
        else:
            metrics.duplicates.inc()
            self.rewrite(self.tables.user_state, user)
        trigger = Trigger(kind="interaction", event_id=interaction.event_id)
        self.refresher.note(interaction.user_id, result.state, partition, trigger, produced_at, result.applied)

    @staticmethod
    def rewrite(table: faust.Table, user: bytes) -> None:
        """Write the user's current value again, for its changelog.

        A duplicate may be a redelivery after a crash. With RocksDB the local table keeps writes
        whose changelog records never left the dead process (faust writes the store at once and
        sends the changelog later), so the local value can be ahead of the changelog; skipping the
        redelivered event would leave the changelog behind for good (a rebalance or a lost volume
        then loses the event). Measured: 55 of 100 users stale after a SIGKILL while the broker was
        frozen (tests/test_crash_safety.py).
        """
        raw = table.get(user)
        if raw is not None:
            table[user] = raw

    async def park(self, user: bytes, interaction: Interaction, message: faust.types.Message) -> None:
        """Queue an event behind the user's waiting ones (or because its media is not there yet)."""
        queue = decode_pending(self.tables.pending.get(user))
        if any(p.partition == message.partition and p.offset == message.offset for p in queue):
            self.rewrite(self.tables.pending, user)  # redelivered while waiting
            return
        if self.state_of(user).has_applied(interaction.event_id, message.partition, message.offset):
            self.runtime.metrics.duplicates.inc()
            self.rewrite(self.tables.user_state, user)
            return
        if len(queue) >= self.settings.pending_limit:
            await self.dead.reject(message, "pending_limit", f"{len(queue)} events of this user already wait for media")
            return
        queue.append(Parked(message.value.decode(), message.partition, message.offset, time.time(), message.timestamp))
        self.tables.pending[user] = encode_pending(queue)
        self.waiting[interaction.media_id].add((interaction.user_id, message.partition))
        self.runtime.metrics.pending.inc()
        await self.wake(interaction.user_id, message.partition)

    async def wake(self, user_id: str, partition: int) -> None:
        # The wakeup must land on the partition that holds the user's state, whatever partitioner
        # the producer of the original event used.
        await self.topics.wakeups.send(key=user_id.encode(), value=Wakeup(user_id).encode(), partition=partition)

    async def drain(self, user: bytes) -> None:
        """Apply the user's waiting events whose media arrived, in order; give up on expired ones."""
        queue = decode_pending(self.tables.pending.get(user))
        before = len(queue)
        deadline = time.time() - self.settings.pending_max_wait_s
        while queue:
            head = queue[0]
            interaction = parse(Interaction, head.value.encode())
            if self.runtime.interactions.ready(interaction):
                await self.apply(user, interaction, head.partition, head.offset, head.produced_at)
            elif head.parked_at < deadline:
                await self.dead.send(
                    topic=self.settings.topic_interactions,
                    partition=head.partition,
                    offset=head.offset,
                    key=user,
                    value=head.value.encode(),
                    reason="media_unavailable",
                    error=f"no features for media {interaction.media_id!r} after {self.settings.pending_max_wait_s:.0f} s",
                )
            else:
                break
            queue.pop(0)
        self.runtime.metrics.pending.dec(before - len(queue))
        if queue:
            self.tables.pending[user] = encode_pending(queue)
        elif before:
            del self.tables.pending[user]

    async def on_new_media(self, media_ids: list[str]) -> None:
        """Wake the users here that wait for any of these media."""
        for media_id in media_ids:
            for user_id, partition in self.waiting.pop(media_id, ()):
                await self.wake(user_id, partition)

    async def sweep(self) -> None:
        """Wake every user with a waiting queue whose head is ready or expired; recount the gauge
        (the increments and decrements of a previous process are lost with it)."""
        deadline = time.time() - self.settings.pending_max_wait_s
        waiting = 0
        for user, raw in list(self.tables.pending.items()):
            queue = decode_pending(raw)
            waiting += len(queue)
            if queue:
                head = parse(Interaction, queue[0].value.encode())
                if self.runtime.interactions.ready(head) or queue[0].parked_at < deadline:
                    await self.wake(user.decode(), queue[0].partition)
        self.runtime.metrics.pending.set(waiting)


def attach_learning(app: faust.App, topics: Topics, learning: Learning) -> None:
    runtime, dead = learning.runtime, learning.dead

    @app.agent(topics.interactions, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            runtime.metrics.consumed.labels(message.topic).inc()
            try:
                interaction = parse(Interaction, event.value)
                if event.key != interaction.user_id.encode():
                    raise InvalidMessage("key_mismatch", f"message key {event.key!r} is not the user id {interaction.user_id!r}")
            except InvalidMessage as exc:
                await dead.reject(message, exc.reason, str(exc))
                continue
            await learning.catalogue_ready.wait()
            async with learning.user_lock(event.key):
                if learning.tables.pending.get(event.key) or not runtime.interactions.ready(interaction):
                    await learning.park(event.key, interaction, message)
                else:
                    await learning.apply(event.key, interaction, message.partition, message.offset, message.timestamp)

    @app.agent(topics.wakeups, name="wake")
    async def wake(stream: faust.StreamT) -> None:
        async for event in stream.events():
            try:
                wakeup = Wakeup.decode(event.value)
            except ValueError as exc:
                await dead.reject(event.message, "invalid_wakeup", str(exc))
                continue
            if event.key != wakeup.user_id.encode():
                await dead.reject(event.message, "key_mismatch", f"message key {event.key!r} is not the user id {wakeup.user_id!r}")
                continue
            await learning.catalogue_ready.wait()
            async with learning.user_lock(event.key):
                await learning.drain(event.key)

    @app.timer(interval=learning.settings.pending_sweep_s)
    async def sweep() -> None:
        await learning.sweep()
