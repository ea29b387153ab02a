"""Run real `mmrec worker` processes against the suite's broker, and talk to their topics."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from mmrec.settings import Settings
from worker.embedded_broker import free_port
from worker.main import create_topics

ROOT = Path(__file__).resolve().parents[1]


def worker_settings(bootstrap: str, data_dir: Path, media_root: Path, **overrides: object) -> Settings:
    """Fast settings for tests: own topics and group, small CNN input, short timeouts."""
    run = uuid.uuid4().hex[:8]
    base: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "data_dir": data_dir,
        "group_id": f"mmrec-test-{run}",
        "client_id": f"worker-{run}",
        "topic_uploads": f"{run}.uploads",
        "topic_interactions": f"{run}.interactions",
        "topic_recommendations": f"{run}.recommendations",
        "topic_dead_letter": f"{run}.dead-letter",
        "topic_features": f"{run}.features",
        "topic_wakeups": f"{run}.wakeups",
        "topic_user_updates": f"{run}.user-updates",
        "partitions": 2,
        "table_store": "memory",
        "producer_max_batch_size": 1,
        "session_timeout_s": 2.0,
        "heartbeat_interval_s": 0.3,
        "commit_interval_s": 0.5,
        "input_size": 64,
        "extract_batch_size": 4,
        "refresh_debounce_ms": 5.0,
        "allowed_uri_schemes": ("file",),
        "media_roots": (media_root,),
        "web_host": "127.0.0.1",
        "web_port": free_port("127.0.0.1"),
        "log_level": "info",
    }
    return Settings(**{**base, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as MMREC_* variables, on top of this process's environment minus MMREC_*."""
    return {**{k: v for k, v in os.environ.items() if not k.upper().startswith("MMREC_")}, **settings.to_env()}


class WorkerProcess:
    """One `mmrec worker` child process; its log is <data_dir>/worker-<n>.log."""

    def __init__(self, settings: Settings, name: str = "worker") -> None:
        self.settings = settings
        self.log_path = settings.data_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mmrec.cli", "worker"], env=settings_env(self.settings), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) if self.log_path.exists() else ""

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def prepare_topics(settings: Settings) -> None:
    await create_topics(settings)


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]], partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, key=key, value=value, partition=partition)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool],
    timeout: float = 60.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[ConsumerRecord]:
    """Every record of a topic from the start until done(records) holds; TimeoutError otherwise."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while not done(records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: condition not met after {timeout} s with {len(records)} records")
            if not alive():
                raise RuntimeError("the worker died")
            batches = await consumer.getmany(timeout_ms=200)
            records.extend(r for batch in batches.values() for r in batch)
        return records
    finally:
        await consumer.stop()
