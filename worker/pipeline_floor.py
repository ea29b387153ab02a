"""The stream benchmark's pipeline floor: the worker's Kafka traffic per interaction with no model work.

Per interaction a worker reads the interaction, writes the user's state to the state table's changelog
and a user update to the user-updates topic, reads that update back (the score role's input) and
writes the user's recommendation list. The relay here does exactly that with plain aiokafka, in a
process of its own, with real messages of the worker's sizes (the interaction parsed, a user state
encoded after one event, a user update, a top-K list naming the trigger), but no faust, no table
store and no model. The same paced load generator as the worker's run (stream_bench.Session) drives
it on the same broker at the same rate.

What it measures is what the machine spends on the traffic alone: the broker's, the load generator's
and the relay's CPU over the paced window, beside the latency and the rate answered. A worker on the
same machine has to fit its model work into what is left.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from worker.subprocesses import stop as terminate

if TYPE_CHECKING:
    from mmrec.settings import Settings

_CHANGELOG_ENV = "MMREC_BENCH_FLOOR_CHANGELOG"
_WAIT_ENV = "MMREC_BENCH_FETCH_WAIT_MS"


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of named processes, read at one moment."""

    seconds: dict[str, float]

    @classmethod
    def read(cls, **pids: int) -> Cpu:
        from worker.stream_bench import cpu_seconds

        return cls({name: cpu_seconds(pid) for name, pid in pids.items()})

    def cores_since(self, earlier: Cpu, elapsed: float) -> dict[str, float]:
        """Cores each process used from `earlier` to this reading, over `elapsed` seconds of wall time."""
        return {name: (seconds - earlier.seconds[name]) / elapsed for name, seconds in self.seconds.items()}


async def measure(settings: Settings, broker_pid: int, rate: float, seconds: float, wait_ms: int, users: int) -> dict:
    """Starts a relay on the settings' topics, paces `rate` interactions/s at it for `seconds` (after
    a warm-up) and returns the run's figures with each process's cores over the paced window."""
    from worker.kafka_admin import TopicSpec, ensure_topics
    from worker.main import create_topics
    from worker.stream_bench import Session

    changelog = f"{settings.client_id}.floor-state-changelog"
    await create_topics(settings)
    await ensure_topics(settings.bootstrap_servers, [TopicSpec(changelog, settings.partitions, 1)])
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MMREC_")} | settings.to_env()
    env |= {_CHANGELOG_ENV: changelog, _WAIT_ENV: str(wait_ms)}
    relay = subprocess.Popen([sys.executable, "-c", "import worker.pipeline_floor as f; f.relay_main()"], env=env)
    media = [f"floor-item-{i:05d}" for i in range(1000)]
    session = Session(settings, media, users, wait_ms)
    await session.start()
    try:
        await session.run(rate=50.0, seconds=3.0)  # warm-up: the relay's consumers join and are assigned
        deadline = time.perf_counter() + 60
        while session.sent and time.perf_counter() < deadline:  # every warm-up interaction answered: both joined
            await asyncio.sleep(0.1)
        pids = {"broker": broker_pid, "load_generator": os.getpid(), "relay": relay.pid}
        before, t0 = Cpu.read(**pids), time.perf_counter()
        measured = await session.run(rate=rate, seconds=seconds)
        measured["cores"] = Cpu.read(**pids).cores_since(before, time.perf_counter() - t0)
    finally:
        await session.stop()
        terminate(relay, grace_s=5)
    return measured


def relay_main() -> None:
    """The relay process: settings from MMREC_*, the changelog topic and fetch wait from the bench."""
    from mmrec.settings import Settings

    asyncio.run(_relay(Settings(), os.environ[_CHANGELOG_ENV], int(os.environ[_WAIT_ENV])))


async def _relay(settings: Settings, changelog: str, wait_ms: int) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from mmrec.messages import Interaction, RankedItem, Recommendations, Trigger
    from mmrec.user_state import UserState, encode_user_state, id_hash
    from worker.user_updates import UserUpdate, decode_user_update, encode_user_update

    cfg = settings.scorer_config()
    bootstrap = settings.bootstrap_servers
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=settings.producer_linger_ms, max_batch_size=settings.producer_max_batch_size)
    consumers = {
        topic: AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=f"{settings.group_id}.floor-{role}", fetch_max_wait_ms=wait_ms, auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout_s * 1000), heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
        )
        for role, topic in (("learn", settings.topic_interactions), ("score", settings.topic_user_updates))
    }
    await producer.start()
    for consumer in consumers.values():
        await consumer.start()

    async def learn() -> None:  # interaction -> the user's state (changelog) and a user update
        async for record in consumers[settings.topic_interactions]:
            interaction = Interaction.model_validate_json(record.value)
            state = UserState.new(cfg)
            state.recent, state.seen = (id_hash(interaction.event_id),), (id_hash(interaction.media_id),)
            encoded = encode_user_state(state, cfg)
            await producer.send(changelog, key=record.key, value=encoded)
            trigger = Trigger(kind="interaction", event_id=interaction.event_id)
            update = UserUpdate(trigger=trigger, produced_at=record.timestamp / 1000, applied=True, state=encoded)
            await producer.send(settings.topic_user_updates, key=record.key, value=encode_user_update(update))

    async def score() -> None:  # user update -> the user's top-K list
        async for record in consumers[settings.topic_user_updates]:
            update = decode_user_update(record.value)
            items = [RankedItem(media_id=f"floor-item-{i:05d}", score=1.0 - i / 100) for i in range(settings.top_k)]
            message = Recommendations(
                user_id=record.key.decode(), items=items, model_version="floor", generated_at=datetime.now(timezone.utc), trigger=update.trigger
            )
            await producer.send(settings.topic_recommendations, key=record.key, value=message.to_json())

    try:
        await asyncio.gather(learn(), score())
    finally:
        for consumer in consumers.values():
            await consumer.stop()
        await producer.stop()
