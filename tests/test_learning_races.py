"""The learning agents under concurrency and redelivery. The interactions agent and the wakeups
agent work on the same users concurrently (each awaits between reading a user's state or queue and
writing it back): the first tests hold both agents open at once and slow the step down, so an
unguarded read-modify-write of a user's state or waiting queue would lose an event."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from unittest.mock import AsyncMock, patch

import pytest

from tests.synthetic_items import make_item
from tests.test_agents import event, eventually, make_worker, version_of
from worker.pending import decode_pending
from worker.service import Worker


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    built = make_worker(tmp_path)
    step = built.runtime.interactions.apply

    def slow_step(*args: object, **kwargs: object):  # noqa: ANN202
        time.sleep(0.02)
        return step(*args, **kwargs)

    built.runtime.interactions.apply = slow_step  # type: ignore[method-assign]
    yield built
    built.runtime.close()


async def test_an_event_arriving_while_the_queue_drains_is_neither_lost_nor_reordered(worker: Worker):
    version = worker.runtime.feature_version
    with patch.object(worker.topics.wakeups, "send", new=AsyncMock()):
        async with worker.app.agents["learn"].test_context() as learn, worker.app.agents["wake"].test_context() as wake:
            for k in range(4):  # waits for "late": the rest queue behind the first
                await learn.put(key=b"u1", value=event(f"p{k}", media="late" if k == 0 else "m1"))
            await eventually(lambda: len(decode_pending(worker.tables.pending.get(b"u1"))) == 4)
            worker.runtime.catalogue.add([make_item("late", seed=42, version=version)])
            await wake.put(key=b"u1", value=b'{"user_id": "u1"}')  # drains p0..p3, one slow step each
            await asyncio.sleep(0.01)
            for k in range(4, 8):  # arrive mid-drain: must queue behind, then apply after p3
                await learn.put(key=b"u1", value=event(f"p{k}", media="m2"))
            await eventually(lambda: version_of(worker, b"u1") == 8 or not worker.tables.pending.get(b"u1"), timeout=20)
            await wake.put(key=b"u1", value=b'{"user_id": "u1"}')  # anything still queued
            await eventually(lambda: version_of(worker, b"u1") == 8, timeout=20)
    assert worker.tables.pending.get(b"u1") is None


async def test_concurrent_steps_of_one_user_are_serialised(worker: Worker):
    version = worker.runtime.feature_version
    with patch.object(worker.topics.wakeups, "send", new=AsyncMock()):
        async with worker.app.agents["learn"].test_context() as learn, worker.app.agents["wake"].test_context() as wake:
            await learn.put(key=b"u2", value=event("q0", user="u2", media="late2"))
            await eventually(lambda: worker.tables.pending.get(b"u2") is not None)
            worker.runtime.catalogue.add([make_item("late2", seed=43, version=version)])
            # A wakeup and several new events at once: every one of them must count.
            await asyncio.gather(
                wake.put(key=b"u2", value=b'{"user_id": "u2"}'),
                *(learn.put(key=b"u2", value=event(f"q{k}", user="u2", media="m3")) for k in range(1, 6)),
            )
            await eventually(lambda: version_of(worker, b"u2") == 6 or not worker.tables.pending.get(b"u2"), timeout=20)
            await wake.put(key=b"u2", value=b'{"user_id": "u2"}')
            await eventually(lambda: version_of(worker, b"u2") == 6, timeout=20)


async def test_a_redelivered_event_writes_the_state_again_for_the_changelog(worker: Worker):
    """After a crash with RocksDB tables kept, the local state can be ahead of the changelog; the
    redelivered event is skipped, but the user's state must be written again (and so sent to the
    changelog), or the changelog stays behind for good."""
    async with worker.app.agents["learn"].test_context() as learn:
        await learn.put(key=b"u3", value=event("r1", user="u3"))
        await eventually(lambda: version_of(worker, b"u3") == 1)
        state = worker.tables.user_state[b"u3"]
        with patch.object(worker.tables.user_state, "send_changelog") as changelog:
            learn.sent_offset -= 1  # the same partition and offset again: a redelivery
            await learn.put(key=b"u3", value=event("r1", user="u3"))
            await eventually(lambda: changelog.called)
    assert version_of(worker, b"u3") == 1 and worker.metrics.duplicates._value.get() == 1
    assert changelog.call_args.args[1:3] == (b"u3", state)
