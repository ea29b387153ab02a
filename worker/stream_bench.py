"""`mmrec bench stream`: one `mmrec worker` (role all; or, with --roles split, a learn process and a
score process, as deploy/kubernetes runs them) on the embedded broker, fed paced interactions.

Measures, on the same broker in the same run:
- the floor: a plain aiokafka produce -> consume round trip (one producer, one consumer, paced at the
  same rate, the same client settings), p50/p99;
- the worker: a synthetic catalogue injected through the features topic (encoded with
  mmrec.item_codec, as the extraction role writes it), interactions of `--users` users on random items
  paced at `--rate` per second, and for each interaction the time from handing it to the producer to
  reading the recommendation it triggered on the output topic (matched by the trigger's event id);
  the sustained rate is the interactions answered per second while paced;
- the pipeline floor (worker/pipeline_floor.py): the worker's four Kafka hops per interaction with no
  model, at the target rate; with the cores the broker, the load generator and each worker use while
  paced, and the worker's model time per interaction (from its own metrics), `cpu_budget` states the
  fewest cores the target rate needs on this machine.
If the worker cannot keep up at `--rate` (answers fall behind), lower rates are tried, each on a
fresh worker (a backlog carried over would sink them all), to find the sustainable one. The
worker's CPU time per interaction and its resident memory are read from /proc.

Tansu parks a fetch that finds no data for its full max wait, even when data arrives meanwhile
(measured: a plain aiokafka round trip at 500/s takes p50 ~130 ms with aiokafka's default 500 ms
wait, ~7 ms with 20 ms). faust's worker consumer asks for 1500 ms (hard-coded), so on Tansu every
hop can stall that long; on Kafka a parked fetch returns as soon as data arrives. This benchmark
therefore runs every consumer (its own, and the worker's, patched at start) with --fetch-wait-ms,
and reports the floor both ways.

The pieces that drive one worker (bench_settings, running_worker, Session, scrape, the /proc
readings) are shared with `mmrec bench soak` (worker/soak_bench.py).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from worker import pipeline_floor
from worker.subprocesses import stop as terminate

if TYPE_CHECKING:
    from mmrec.settings import Settings

_TICK_S = 0.005  # the paced producer sends what is due every tick


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=1000.0, help="interactions per second offered")
    parser.add_argument("--seconds", type=float, default=30.0, help="paced duration at each rate")
    parser.add_argument("--fallback-rates", type=float, nargs="*", default=[300.0, 150.0, 100.0], help="tried in order when --rate is not sustained")
    parser.add_argument(
        "--roles", choices=["all", "split"], default="all",
        help="all: one worker process (role all); split: a learn process and a score process, as deploy/kubernetes runs them",
    )
    add_worker_arguments(parser)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that drives one worker (stream, soak)."""
    parser.add_argument("--users", type=int, default=100_000, help="distinct user ids")
    parser.add_argument("--items", type=int, default=10_000, help="catalogue items (synthetic, through the features topic)")
    parser.add_argument("--torch-threads", type=int, default=1, help="the worker's MMREC_TORCH_THREADS")
    parser.add_argument("--keep", action="store_true", help="keep the worker's folder (log, store) for inspection")
    parser.add_argument("--fetch-wait-ms", type=int, default=10, help="fetch_max_wait_ms of every consumer (see worker/stream_bench.py)")


def run(args: argparse.Namespace) -> dict:
    from mmrec.bench.common import emit

    result = asyncio.run(_main(args))
    return emit("stream", result.pop("config"), result.pop("figures"), result.pop("notes"), as_json=args.json)


async def _main(args: argparse.Namespace) -> dict:
    from worker.embedded_broker import EmbeddedBroker
    from worker.main import create_topics

    folder = Path(tempfile.mkdtemp(prefix="mmrec-stream-bench-"))
    notes: list[str] = []
    with EmbeddedBroker() as broker:
        settings = bench_settings(broker.bootstrap, folder, args.torch_threads)
        await create_topics(settings)
        floor = await _floor(broker.bootstrap, f"{settings.client_id}.floor", settings.partitions, args.rate, min(args.seconds, 10.0), args.fetch_wait_ms)
        floor_default = await _floor(broker.bootstrap, f"{settings.client_id}.floor-default", settings.partitions, args.rate, 5.0, None)
        floor_settings = bench_settings(broker.bootstrap, folder / "pipeline-floor", args.torch_threads)
        pipeline = await pipeline_floor.measure(floor_settings, broker.pid, args.rate, args.seconds, args.fetch_wait_ms, args.users)
        roles = ("all",) if args.roles == "all" else ("learn", "score")
        runs: list[dict] = []
        startup: tuple[float, float] | None = None  # the first worker's catalogue injection and readiness seconds
        for rate in [args.rate, *args.fallback_rates]:  # each on a fresh worker: no backlog carried over
            if runs:
                settings = bench_settings(broker.bootstrap, folder / f"rate-{rate:g}", args.torch_threads)
                await create_topics(settings)
            async with running_worker(settings, args.items, args.fetch_wait_ms, roles) as worker:
                measured, metrics = await _measure(settings, worker, rate, args, broker.pid)
            runs.append(measured)
            startup = startup or (worker.inject_s, worker.ready_s)
            if measured["sustained"]:
                break
    notes += remove_folder(folder, args.keep)
    target = runs[0]
    best = next((r for r in runs if r["sustained"]), None)
    figures = {
        "floor_ms": floor,
        "floor_default_client_ms": floor_default,
        "pipeline_floor": pipeline,
        "cpu_budget": cpu_budget(args.rate, pipeline, target),
        "target_rate": target,
        "sustained_rate": best["answered_per_s"] if best else None,
        "at_sustained": best,
        "ratio_vs_floor_p50": (best or target)["latency_ms"]["p50"] / floor["p50"],
        "ratio_vs_floor_p99": (best or target)["latency_ms"]["p99"] / floor["p99"],
        "worker_metrics": metrics,
    }
    config = {
        "users": args.users, "items": args.items, "item_kind": "concepts (synthetic)", "offered_rates": [r["offered_per_s"] for r in runs],
        "seconds_per_rate": args.seconds, **worker_config(settings, args.fetch_wait_ms, roles),
        "catalogue_inject_s": startup and startup[0], "worker_ready_s": startup and startup[1], "N": 3, "m": 3, "d": 8, "input_size": 224, "device": "cpu",
    }
    notes.append("latency: from handing an interaction to the producer to reading the recommendation it triggered (same process clock)")
    notes.append("sustained: answered >= 97% of offered and p99 under 1 s; the producer, consumer, broker and worker share the machine")
    return {"config": config, "figures": figures, "notes": notes}


async def _measure(settings: Settings, worker: RunningWorker, rate: float, args: argparse.Namespace, broker_pid: int) -> tuple[dict, dict[str, float]]:
    """A warm-up, then `rate` interactions/s for --seconds: the run's figures (with the cores each
    process used and the worker's model time per interaction, over the paced window) and the
    worker's metrics."""
    session = Session(settings, worker.media, args.users, args.fetch_wait_ms)
    await session.start()
    try:
        await session.run(rate=50.0, seconds=3.0)  # warm-up: first calls, kernels, table files
        pids = {"broker": broker_pid, "load_generator": os.getpid()}
        cpu0, metrics0, before, t0 = worker.cpu_seconds(), worker.metrics(), pipeline_floor.Cpu.read(**pids), time.perf_counter()
        measured = await session.run(rate=rate, seconds=args.seconds)
        elapsed, worker_cpu = time.perf_counter() - t0, worker.cpu_seconds() - cpu0
        measured["cores"] = pipeline_floor.Cpu.read(**pids).cores_since(before, elapsed) | {"worker": worker_cpu / elapsed}
        measured["worker_cpu_ms_per_event"] = 1e3 * worker_cpu / max(1, measured["sent"])
        measured["model_ms_per_interaction"] = model_ms_per_interaction(metrics0, worker.metrics())
        measured["worker_rss_mb"] = worker.rss_mb()
    finally:
        await session.stop()
    return measured, worker.metrics()


def model_ms_per_interaction(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The worker's model time per interaction between two scrapes (ms): its online step and one
    user's share of a refresh call, from the worker's own histograms (summed over roles)."""
    def delta(name: str) -> float:
        return sum(after[k] - before.get(k, 0.0) for k in after if k.rpartition(":")[2] == name)

    step = 1e3 * delta("mmrec_online_step_seconds_sum") / max(1.0, delta("mmrec_online_step_seconds_count"))
    refresh = 1e3 * delta("mmrec_refresh_seconds_sum") / max(1.0, delta("mmrec_refreshed_users_total"))
    return {"step": step, "refresh": refresh, "total": step + refresh}


def cpu_budget(rate: float, pipeline: dict, target: dict) -> dict:
    """What `rate` interactions/s needs of this machine at the least: the broker's and the load
    generator's cores with no model work (the pipeline floor at that rate) plus the worker's model time
    per interaction (measured in the worker at the target rate, in its own batches) times the rate.
    Faust, the table store and every line of Python glue come on top."""
    traffic = pipeline["cores"]["broker"] + pipeline["cores"]["load_generator"]
    model = rate * target["model_ms_per_interaction"]["total"] / 1e3
    cores = len(os.sched_getaffinity(0))
    return {"cores": cores, "traffic_cores": traffic, "model_cores": model, "lower_bound_cores": traffic + model, "fits": traffic + model < cores}


def bench_settings(bootstrap: str, folder: Path, torch_threads: int) -> Settings:
    """A worker's settings for one benchmark run: its own topics and group (a fresh run id), `folder`
    for its data, a free web port on 127.0.0.1."""
    from mmrec.settings import Settings
    from worker.embedded_broker import free_port

    run_id = uuid.uuid4().hex[:8]
    return Settings(
        bootstrap_servers=bootstrap,
        data_dir=folder,
        group_id=f"bench-{run_id}",
        client_id=f"bench-{run_id}",
        topic_uploads=f"{run_id}.uploads",
        topic_interactions=f"{run_id}.interactions",
        topic_recommendations=f"{run_id}.recommendations",
        topic_dead_letter=f"{run_id}.dead-letter",
        topic_features=f"{run_id}.features",
        topic_wakeups=f"{run_id}.wakeups",
        topic_user_updates=f"{run_id}.user-updates",
        web_host="127.0.0.1",
        web_port=free_port("127.0.0.1"),
        log_level="warning",
        torch_threads=torch_threads,
    )


def worker_config(settings: Settings, wait_ms: int, roles: Sequence[str] = ("all",)) -> dict:
    """The worker's settings a benchmark result names."""
    return {
        "role": "+".join(roles), "partitions": settings.partitions, "table_store": settings.table_store, "top_k": settings.top_k,
        "refresh_debounce_ms": settings.refresh_debounce_ms, "retrieval": settings.retrieval,
        "shortlist": settings.retrieval_config().shortlist_size(settings.top_k), "worker_torch_threads": settings.torch_threads,
        "producer_max_batch_size": settings.producer_max_batch_size, "producer_linger_ms": settings.producer_linger_ms,
        "broker": "tansu (embedded, memory storage)", "fetch_max_wait_ms": wait_ms,
    }


@dataclass(frozen=True)
class RunningWorker:
    processes: list[subprocess.Popen]  # one per role
    settings: list[Settings]  # each process's
    media: list[str]  # the catalogue's item ids
    inject_s: float  # seconds to produce the catalogue onto the features topic
    ready_s: float  # seconds from starting the worker to its readiness with every item

    @property
    def process(self) -> subprocess.Popen:
        return self.processes[0]

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def rss_mb(self) -> float:
        return sum(rss_mb(p.pid) for p in self.processes)

    def metrics(self) -> dict[str, float]:
        """Every process's scrape; with several roles each name is prefixed by its role."""
        if len(self.settings) == 1:
            return scrape(self.settings[0])
        return {f"{s.role}:{name}": value for s in self.settings for name, value in scrape(s).items()}


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, items: int, wait_ms: int, roles: Sequence[str] = ("all",)) -> AsyncIterator[RunningWorker]:
    """Injects `items` synthetic items, starts one `mmrec worker` per role (every consumer's fetch
    wait at wait_ms, logs in settings.data_dir, each role on its own web port) and waits until each
    is ready; SIGTERM (then SIGKILL) on exit."""
    from worker.embedded_broker import free_port

    t0 = time.perf_counter()
    media = await _inject_catalogue(settings, items)
    inject_s = time.perf_counter() - t0
    command = [sys.executable, "-c", "import worker.stream_bench as b; b.worker_main()"]
    each = [settings] if tuple(roles) == ("all",) else [
        settings.model_copy(update={"role": role, "web_port": free_port("127.0.0.1"), "data_dir": Path(settings.data_dir) / role}) for role in roles
    ]
    processes = []
    try:
        for role_settings in each:
            Path(role_settings.data_dir).mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MMREC_")} | role_settings.to_env()
            env["MMREC_BENCH_FETCH_WAIT_MS"] = str(wait_ms)
            with open(Path(settings.data_dir) / f"worker-{role_settings.role}.log", "ab") as log:
                processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        t0 = time.perf_counter()
        for role_settings, process in zip(each, processes):
            await _wait_ready(role_settings, items, process)
        yield RunningWorker(processes, each, media, inject_s, time.perf_counter() - t0)
    finally:
        for process in processes:
            terminate(process, grace_s=30)


def remove_folder(folder: Path, keep: bool) -> list[str]:
    """Removes a run's worker folder unless kept; the note to add when kept."""
    if keep:
        return [f"worker folder kept: {folder}"]
    shutil.rmtree(folder, ignore_errors=True)
    return []


def worker_main() -> None:
    """`mmrec worker` with every aiokafka consumer's fetch_max_wait_ms set from MMREC_BENCH_FETCH_WAIT_MS."""
    import aiokafka

    from mmrec.cli import main

    wait_ms = int(os.environ.pop("MMREC_BENCH_FETCH_WAIT_MS"))
    base = aiokafka.AIOKafkaConsumer

    class Consumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["fetch_max_wait_ms"] = wait_ms
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = Consumer  # faust's driver calls aiokafka.AIOKafkaConsumer(...)
    sys.exit(main(["worker"]))


async def _floor(bootstrap: str, topic: str, partitions: int, rate: float, seconds: float, wait_ms: int | None) -> dict[str, float]:
    """Plain aiokafka round trip at the same pace: produce -> consume latency percentiles (ms);
    wait_ms None: aiokafka's default fetch_max_wait_ms."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from mmrec.bench.common import quantile
    from worker.kafka_admin import TopicSpec, ensure_topics

    await ensure_topics(bootstrap, [TopicSpec(topic, partitions, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    extra = {} if wait_ms is None else {"fetch_max_wait_ms": wait_ms}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **extra)
    await producer.start()
    await consumer.start()
    sent: dict[bytes, float] = {}
    latencies: list[float] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()

        async def read() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=100)
                now = time.perf_counter()
                for batch in batches.values():
                    for record in batch:
                        if record.value in sent:
                            latencies.append(now - sent[record.value])

        reader = asyncio.create_task(read())
        count = int(rate * seconds)
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > _TICK_S:
                await asyncio.sleep(delay)
            value = f"ping-{i}".encode()
            sent[value] = time.perf_counter()
            await producer.send(topic, value=value, key=str(random.randrange(100_000)).encode())
        deadline = time.perf_counter() + 10
        while len(latencies) < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    return {"p50": 1e3 * quantile(latencies, 0.5), "p99": 1e3 * quantile(latencies, 0.99), "count": len(latencies)}


async def _inject_catalogue(settings: Settings, count: int) -> list[str]:
    """Synthetic items, encoded as the extraction role encodes them, onto the features topic."""
    import torch
    from aiokafka import AIOKafkaProducer

    from mmrec.bench.synthetic import concept_items
    from mmrec.extraction import feature_version
    from mmrec.features import ItemFeatures
    from mmrec.item_codec import encode_item

    version = feature_version(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, max_request_size=4 * 2**20)
    await producer.start()
    ids = [f"item{i:06d}" for i in range(count)]
    try:
        for start in range(0, count, 2048):
            maps, _ = concept_items(min(2048, count - start), seed=100 + start)
            now = time.time()
            for k in range(maps[0].shape[0]):
                item = ItemFeatures(ids[start + k], "image", tuple(m[k].to(torch.float16) for m in maps), version, now)
                await producer.send(settings.topic_features, key=item.media_id.encode(), value=encode_item(item))
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def _wait_ready(settings: Settings, items: int, worker: subprocess.Popen, timeout: float = 180.0) -> None:
    """Until /health/ready answers 200 and the worker's catalogue holds every item."""
    deadline = time.monotonic() + timeout
    base = f"http://{settings.web_host}:{settings.web_port}"
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with {worker.returncode}; see its log under {settings.data_dir}")
        try:
            with urllib.request.urlopen(f"{base}/health/ready", timeout=2) as resp:
                ready = resp.status == 200
            if ready and scrape(settings).get("mmrec_catalogue_items", 0) >= items:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the worker was not ready with {items} items after {timeout} s")


def scrape(settings: Settings) -> dict[str, float]:
    """A few of the worker's own metrics (Prometheus text)."""
    wanted = ("mmrec_catalogue_items", "mmrec_active_users", "mmrec_users_held", "mmrec_online_step_seconds_sum",
              "mmrec_online_step_seconds_count", "mmrec_refresh_seconds_sum", "mmrec_refresh_seconds_count", "mmrec_refreshed_users_total")
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://{settings.web_host}:{settings.web_port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                name, _, value = line.partition(" ")
                if name in wanted:
                    out[name] = float(value)
    except OSError:
        pass
    return out


class Answer(NamedTuple):
    number: int  # the trigger's event number
    sent_at: float  # perf_counter when the interaction was handed to the producer
    answered_at: float  # perf_counter when the recommendation it triggered was read


class Session:
    """A paced interaction producer and a recommendations reader, for one worker. An interaction is
    outstanding (in `sent`) until the first recommendation naming it as trigger is read: then it moves
    to `answers`."""

    def __init__(self, settings: Settings, media: list[str], users: int, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        self.settings = settings
        self.media = media
        self.users = users
        self.sent: dict[int, float] = {}
        self.answers: list[Answer] = []
        self.users_seen: set[int] = set()
        self.rng = random.Random(0)
        self.counter = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        bootstrap = self.settings.bootstrap_servers
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=self.wait_ms)
        await self.producer.start()
        await self.consumer.start()
        topic = self.settings.topic_recommendations
        self.consumer.assign([TopicPartition(topic, p) for p in range(self.settings.partitions)])
        await self.consumer.seek_to_beginning()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for batch in batches.values():
                for record in batch:
                    trigger = json.loads(record.value).get("trigger") or {}
                    number = _event_number(trigger.get("event_id"))
                    sent_at = self.sent.pop(number, None)
                    if sent_at is not None:
                        self.answers.append(Answer(number, sent_at, now))

    async def pace(self, rate: float, seconds: float) -> range:
        """Sends rate * seconds interactions (random users and items), paced; their event numbers."""
        from datetime import datetime, timezone

        from mmrec.messages import Interaction

        topic = self.settings.topic_interactions
        first = self.counter + 1
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > _TICK_S:
                await asyncio.sleep(delay)
            self.counter += 1
            index = self.rng.randrange(self.users)
            self.users_seen.add(index)
            user = f"user{index:06d}"
            message = Interaction(
                event_id=f"ev{self.counter:08d}", user_id=user, media_id=self.rng.choice(self.media), kind="click", timestamp=datetime.now(timezone.utc)
            )
            value = message.to_json()
            self.sent[self.counter] = time.perf_counter()
            await self.producer.send(topic, key=user.encode(), value=value)
        return range(first, self.counter + 1)

    async def run(self, rate: float, seconds: float) -> dict:
        """Paces interactions for `seconds`, waits for their answers; throughput and latency figures."""
        mark = len(self.answers)
        start = time.perf_counter()
        numbers = await self.pace(rate, seconds)
        paced_s = time.perf_counter() - start
        deadline = time.perf_counter() + max(5.0, seconds / 2)
        while sum(n not in self.sent for n in numbers[-200:]) < 190 and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        mine = [a for a in self.answers[mark:] if a.number in numbers]
        latencies = [a.answered_at - a.sent_at for a in mine]
        in_time = [a for a in mine if a.answered_at <= start + paced_s + 1.0]
        answered = len(latencies) / max(1, len(numbers))
        latency_ms = latency_figures(latencies)
        return {
            "offered_per_s": rate,
            "sent": len(numbers),
            "paced_s": paced_s,
            "answered_share": answered,
            "answered_per_s": len(in_time) / (paced_s + 1.0),
            "latency_ms": latency_ms,
            "sustained": answered >= 0.97 and latency_ms["p99"] < 1000.0,
        }

    def take_answers(self) -> list[Answer]:
        """The answers read since the last call."""
        answers, self.answers = self.answers, []
        return answers

    def overdue(self, sent_before: float) -> int:
        """How many interactions sent before a perf_counter time are still unanswered."""
        return sum(1 for _ in itertools.takewhile(lambda sent_at: sent_at < sent_before, self.sent.values()))

    async def stop(self) -> None:
        self.reader.cancel()
        await self.producer.stop()
        await self.consumer.stop()


def latency_figures(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99 and max of latencies, in ms (NaN when there are none)."""
    from mmrec.bench.common import quantile

    ms = [1e3 * s for s in seconds]
    return {"p50": quantile(ms, 0.5), "p90": quantile(ms, 0.9), "p99": quantile(ms, 0.99), "max": max(ms, default=float("nan"))}


def _event_number(event_id: object) -> int | None:
    """n of a benchmark event id "ev<n>" (None for any other trigger)."""
    if isinstance(event_id, str) and event_id.startswith("ev") and event_id[2:].isdigit():
        return int(event_id[2:])
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (MB)."""
    from mmrec.bench.common import rss_bytes

    return rss_bytes(pid) / 2**20
