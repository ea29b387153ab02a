"""The learning agents: each interaction takes one online step on its user's state (a faust Table
partitioned by user id); events whose media has no features yet wait in order and are retried.

The interactions agent takes events in batches (`MMREC_LEARN_BATCH`, waiting at most
`MMREC_LEARN_BATCH_WAIT_MS` for a batch to fill) and steps them on the event loop's thread
(worker/runtime.py says why not on a thread of their own): one state read and write per user per
batch. Events of one user are stepped in their order, and faust acks a batch only after it is handled.

At-least-once delivery plus idempotent updates: a user's state records the partition and offset of
the last applied event and the ids of recent ones, so a redelivered or re-sent event is a no-op.

The two agents (interactions and wakeups) run concurrently on the same partitions and await between
reading a user's state or queue and writing it back (parking sends a wakeup; dead-lettering sends a
record): every read-modify-write of one user's state and queue holds that user's lock, or an event
applied or parked by one agent is overwritten by the other (measured, when steps ran on a thread of
their own: events lost without any crash). Neither agent handles an event before the catalogue has
read the features topic up to where it stood at start, so negatives are drawn from the same items as
a replay would.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass

import faust
from faust.streams import _current_event  # faust has no public way to set it (see acting_for)
from faust.types import EventT

from mmrec.messages import Interaction, InvalidMessage, Trigger, parse
from mmrec.user_state import UserState, decode_user_state, encode_user_state
from worker.app import Tables, Topics
from worker.dead_letters import DeadLetters
from worker.pending import Parked, Wakeup, decode_pending, encode_pending
from worker.refresh import Refresher
from worker.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """An event whose media is in the catalogue, due for its online step."""

    user: bytes
    interaction: Interaction
    partition: int
    offset: int
    produced_at: float | None  # Kafka timestamp, for the interaction-to-recommendation latency
    event: EventT | None = None  # the event whose partition the user's table rows live in; None: faust's current event


@contextmanager
def acting_for(event: EventT | None) -> Iterator[None]:
    """Table reads and writes inside the block go to `event`'s partition.

    faust picks a table row's partition (the RocksDB store and the changelog partition) from its
    current event, which a batch taken with take_events does not set: the batch's events belong
    to several partitions. None leaves the current event as it is.
    """
    if event is None:
        yield
        return
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


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
        self._partitions_seen: set[tuple[str, int]] = set()  # logged once: where each partition's events start here

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

    @asynccontextmanager
    async def users_locked(self, users: Collection[bytes]) -> AsyncIterator[None]:
        """Holds the locks of all these users (taken in sorted order: no other holder takes two)."""
        async with AsyncExitStack() as stack:
            for user in sorted(users):
                await stack.enter_async_context(self.user_lock(user))
            yield

    def state_of(self, user: bytes) -> UserState:
        raw = self.tables.user_state.get(user)
        return self.runtime.initial_state(user.decode()) if raw is None else decode_user_state(raw, self.runtime.cfg)

    async def handle(self, events: Sequence[EventT]) -> None:
        """A batch of interaction events: the invalid are dead-lettered, events whose media is missing
        (or whose user already has events waiting) are parked, the rest are stepped in order."""
        valid: list[tuple[EventT, Interaction]] = []
        for event in events:
            message = event.message
            self.runtime.metrics.consumed.labels(message.topic).inc()
            if (message.topic, message.partition) not in self._partitions_seen:
                self._partitions_seen.add((message.topic, message.partition))
                log.info("learn: the first event of %s/%d in this process is at offset %d", message.topic, message.partition, message.offset)
            try:
                interaction = parse(Interaction, event.value)
                if event.key != interaction.user_id.encode():
                    raise InvalidMessage("key_mismatch", f"message key {event.key!r} is not the user id {interaction.user_id!r}")
            except InvalidMessage as exc:
                await self.dead.reject(message, exc.reason, str(exc))
                continue
            valid.append((event, interaction))
        await self.catalogue_ready.wait()
        async with self.users_locked({event.key for event, _ in valid}):
            steps = []
            for event, interaction in valid:
                message = event.message
                with acting_for(event):  # a park reads and writes this user's rows now
                    if self.tables.pending.get(event.key) or not self.runtime.interactions.ready(interaction):
                        await self.park(event.key, interaction, message)
                    else:
                        steps.append(Step(event.key, interaction, message.partition, message.offset, message.timestamp, event))
            self.apply(steps)

    def apply(self, steps: Sequence[Step]) -> None:
        """Online steps in order; each user's state is read and written once. The caller holds the users' locks."""
        if not steps:
            return
        first: dict[bytes, Step] = {}
        for step in steps:
            first.setdefault(step.user, step)
        states = {}
        for user, step in first.items():
            with acting_for(step.event):
                states[step.interaction.user_id] = self.state_of(user)
        started = time.perf_counter()
        results = self.runtime.interactions.apply_many(states, [(s.interaction, s.partition, s.offset) for s in steps])
        seconds = (time.perf_counter() - started) / len(steps)
        metrics = self.runtime.metrics
        applied: set[bytes] = set()
        for step, result in zip(steps, results):
            if result.applied:
                applied.add(step.user)
                metrics.step_seconds.observe(seconds)
                metrics.step_loss.observe(result.loss)
            else:
                metrics.duplicates.inc()
        for user, step in first.items():
            with acting_for(step.event):
                if user in applied:
                    self.tables.user_state[user] = encode_user_state(states[step.interaction.user_id], self.runtime.cfg)
                else:
                    self.rewrite(self.tables.user_state, user)
        for step, result in zip(steps, results):
            trigger = Trigger(kind="interaction", event_id=step.interaction.event_id)
            self.refresher.note(step.interaction.user_id, result.state, step.partition, trigger, step.produced_at, result.applied)

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
                self.apply([Step(user, interaction, head.partition, head.offset, head.produced_at)])
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
    dead, settings = learning.dead, learning.settings

    @app.agent(topics.interactions, name="learn")
    async def learn(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.learn_batch, within=settings.learn_batch_wait_ms / 1000):
            await learning.handle(events)

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
