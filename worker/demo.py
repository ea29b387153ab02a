"""`mmrec demo`: the streaming path end to end on the embedded default.

With no MMREC_BOOTSTRAP_SERVERS it starts the bundled Tansu broker on a free loopback port. It
creates the topics, starts a worker process, uploads the images and clips that ship in registry
packages, plays interactions from simulated users with distinct visual tastes, and prints each
user's latest recommendations as they arrive on the output topic. Ctrl-C (or the end of --seconds)
stops everything: producer, consumer, worker and broker.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from mmrec.feedback import EventKind
from mmrec.messages import Interaction, MediaUpload
from mmrec.samples import sample_images, sample_videos
from mmrec.settings import Settings
from worker.embedded_broker import EmbeddedBroker, free_port
from worker.kafka_client import client_kwargs
from worker.main import create_topics
from worker.subprocesses import stop

# Simulated users: each engages with half of the media of their taste and skips other media.
TASTES: dict[str, tuple[str, ...]] = {
    "ada (textures)": ("brick", "grass", "gravel", "chessboard_GRAY", "chessboard_RGB", "coins"),
    "bo (microscopy & sky)": ("cell", "ihc", "microaneurysms", "retina", "hubble_deep_field", "moon"),
    "cy (vehicles & motion)": ("motorcycle_left", "motorcycle_right", "rocket", "bikes", "carphone_pristine", "carphone_distorted"),
}
SHOWN = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to play interactions")
    parser.add_argument("--rate", type=float, default=6.0, help="interactions per second, all users together")
    parser.add_argument("--seed", type=int, default=7)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    with contextlib.ExitStack() as stack:
        if not settings.bootstrap_servers:
            broker = stack.enter_context(EmbeddedBroker())
            print(f"embedded Tansu broker on {broker.bootstrap} (pid {broker.pid})")
            demo_dir = settings.data_dir / "demo"
            shutil.rmtree(demo_dir, ignore_errors=True)
            settings = Settings(
                bootstrap_servers=broker.bootstrap,
                data_dir=demo_dir,
                table_store="memory",
                producer_max_batch_size=1,  # Tansu reports end offsets right only for one-record batches
                session_timeout_s=2.0,
                heartbeat_interval_s=0.3,
                partitions=4,
                web_host="127.0.0.1",
                web_port=free_port("127.0.0.1"),
            )
        media = {p.stem: p for p in [*sample_images(), *sample_videos()]}
        asyncio.run(create_topics(settings))
        worker = stack.enter_context(_worker_process(settings, media))
        try:
            asyncio.run(_play(settings, media, args, worker))
        except KeyboardInterrupt:
            print("\ninterrupted: stopping the worker and the broker")
    return 0


@contextlib.contextmanager
def _worker_process(settings: Settings, media: dict[str, Path]) -> Iterator[subprocess.Popen]:
    """`mmrec worker` in a child process with these settings (as MMREC_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MMREC_")}
    env.update(settings.to_env())
    env["MMREC_ALLOWED_URI_SCHEMES"] = "file"
    env["MMREC_MEDIA_ROOTS"] = ",".join(sorted({str(p.parent) for p in media.values()}))
    env["MMREC_LOG_LEVEL"] = "warning"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    log = open(settings.data_dir / "worker.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    print(f"worker pid {process.pid}, log {settings.data_dir / 'worker.log'}")
    try:
        yield process
    finally:
        stop(process, grace_s=20)
        log.close()
        print(f"worker stopped (exit {process.returncode})")


async def _play(settings: Settings, media: dict[str, Path], args: argparse.Namespace, worker: subprocess.Popen) -> None:
    kwargs = client_kwargs(settings)
    producer = AIOKafkaProducer(**kwargs)
    consumer = AIOKafkaConsumer(settings.topic_recommendations, **kwargs, group_id=None, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    started = datetime.now(timezone.utc)
    latest: dict[str, list[str]] = {}
    try:
        for stem, path in media.items():
            kind = "video" if path.suffix == ".mp4" else "image"
            upload = MediaUpload(media_id=stem, uri=path.as_uri(), media_type=kind, created_at=started)
            await producer.send_and_wait(settings.topic_uploads, key=stem.encode(), value=upload.to_json())
        print(f"uploaded {len(media)} media; playing interactions of {len(TASTES)} users for {args.seconds:.0f} s\n")
        reader = asyncio.create_task(_read(consumer, started, latest))
        await _interact(producer, settings, media, args, latest, worker)
        reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    _show(latest, final=True)


async def _read(consumer: AIOKafkaConsumer, since: datetime, latest: dict[str, list[str]]) -> None:
    async for record in consumer:
        message = json.loads(record.value)
        if datetime.fromisoformat(message["generated_at"]) >= since:
            latest[message["user_id"]] = [item["media_id"] for item in message["items"]]


async def _interact(
    producer: AIOKafkaProducer,
    settings: Settings,
    media: dict[str, Path],
    args: argparse.Namespace,
    latest: dict[str, list[str]],
    worker: subprocess.Popen,
) -> None:
    rng = random.Random(args.seed)
    end = time.monotonic() + args.seconds
    next_show = time.monotonic() + 5
    count = 0
    while time.monotonic() < end:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; see {settings.data_dir / 'worker.log'}")
        user, taste = rng.choice(list(TASTES.items()))
        liked = [m for m in taste if m in media][::2]
        if rng.random() < 0.5:
            media_id, kind = rng.choice(liked), EventKind.CLICK
        else:
            media_id, kind = rng.choice([m for m in media if m not in taste]), EventKind.SKIP
        count += 1
        event = Interaction(
            event_id=f"demo-{count}", user_id=user, media_id=media_id, kind=kind, timestamp=datetime.now(timezone.utc)
        )
        await producer.send(settings.topic_interactions, key=user.encode(), value=event.to_json())
        await asyncio.sleep(1 / args.rate)
        if time.monotonic() >= next_show:
            _show(latest)
            next_show += 5


def _show(latest: dict[str, list[str]], final: bool = False) -> None:
    stamp = "final" if final else time.strftime("%H:%M:%S")
    print(f"--- {stamp}: top {SHOWN} per user (* = a held-out item of the user's taste, never engaged with)")
    for user, taste in TASTES.items():
        held_out = set(taste[1::2])
        top = latest.get(user)
        if top is None:
            print(f"  {user:<24} (waiting for the first recommendations)")
            continue
        shown = " ".join(f"{'*' if m in held_out else ' '}{m}" for m in top[:SHOWN])
        hits = sum(m in held_out for m in top[:SHOWN])
        print(f"  {user:<24} {hits}/{len(held_out)} |{shown}")
    print()
