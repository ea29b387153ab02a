"""Assembles one worker process: the App, the mmrec runtime and the agents of the chosen role.

Roles (`MMREC_ROLE`, `mmrec worker --role`), one image for all of them:

| role    | consumer group (faust id) | reads                                     | writes                                  |
|---------|---------------------------|-------------------------------------------|-----------------------------------------|
| extract | `<group>-extract`         | media.uploads                             | mmrec.item-features                     |
| learn   | `<group>`                 | user.interactions, wakeups, item-features | tables + changelogs, mmrec.user-updates |
| score   | `<group>-score`           | mmrec.user-updates, item-features         | user.recommendations                    |
| all     | `<group>`                 | everything above; learn calls the refresher directly (no user-updates topic) |

faust expects every member of one consumer group to run the same agents, so each split role has a
group of its own; learn keeps `<group>` so that its tables (and changelog topics) are the same as
the `all` role's. Do not run `all` next to split roles of the same group id.
"""
from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.types import TP

from mmrec.settings import Settings
from worker.app import Tables, Topics, build_app
from worker.catalogue_sync import CatalogueSync
from worker.dead_letters import DeadLetters
from worker.extract_agent import attach_extraction
from worker.fetch import MediaFetcher
from worker.health import EXTRACTING, SCORING, Health
from worker.learn_agent import Learning, attach_learning
from worker.metrics import Metrics
from worker.refresh import Refresher
from worker.runtime import Runtime
from worker.score_agent import attach_scoring
from worker.user_updates import UserUpdatePublisher

ROLES = ("all", "extract", "learn", "score")
LEARNING = ("learn", "all")  # roles that own the user tables
PUBLISHING = ("score", "all")  # roles that publish recommendations


@dataclass(frozen=True)
class Worker:
    app: faust.App
    topics: Topics
    tables: Tables | None  # None for the extract and score roles
    runtime: Runtime
    metrics: Metrics
    health: Health
    catalogue: CatalogueSync | None = None  # None for the extract role


def app_id(settings: Settings) -> str:
    """The faust id (= consumer group, prefix of internal topics) of settings.role."""
    return settings.group_id if settings.role in LEARNING else f"{settings.group_id}-{settings.role}"


def users_held(table: faust.Table) -> float:
    """Users in the table's active partitions: RocksDB's key estimate (no scan), else len()."""
    store = table.data
    if hasattr(store, "_dbs_for_actives"):
        return float(sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in store._dbs_for_actives()))
    return float(len(store))


def create_worker(settings: Settings, metrics: Metrics | None = None, *, web_enabled: bool = True) -> Worker:
    """The App with every agent, task and hook of settings.role wired to a fresh Runtime."""
    role = settings.role
    metrics = metrics or Metrics()
    app, topics, tables = build_app(settings, app_id=app_id(settings), with_tables=role in LEARNING, web_enabled=web_enabled)
    if web_enabled:
        # Stable faust_* names whatever the group id; the same registry as ours, so /metrics has both.
        setup_prometheus_sensors(app, registry=metrics.registry, name_prefix="faust")
    metrics.worker_info.labels(role, app.conf.id).set(1)
    runtime = Runtime(settings, metrics)
    dead = DeadLetters(topics.dead_letter, metrics, settings.client_id)
    health = Health(app, role, metrics)
    if web_enabled:
        health.attach()

    if role in EXTRACTING:
        fetcher = MediaFetcher(settings)
        attach_extraction(app, topics, runtime, dead, fetcher)
        metrics.track_extraction_staleness()

        @app.task
        async def load_cnn() -> None:
            """Load the CNN now rather than on the first upload; the worker is ready once it is in memory."""
            await runtime.on_extract_thread(runtime.extractor)
            health.cnn_loaded = True

        @app.on_before_shutdown.connect
        async def close_fetcher(sender: faust.App, **_: object) -> None:
            await fetcher.close()

    sync: CatalogueSync | None = None
    if role in SCORING:
        listeners = []
        refresher: Refresher | None = None
        learning: Learning | None = None
        if role in PUBLISHING:
            refresher = Refresher(runtime, topics.recommendations)
            listeners.append(refresher.on_new_items)
            app.task(refresher.run)
        if role in LEARNING:
            assert tables is not None
            # In `all`, a changed state is scored right here; in `learn`, it goes to the score role.
            sink = refresher if refresher is not None else UserUpdatePublisher(topics.user_updates, runtime.cfg, metrics)
            learning = Learning(runtime, tables, topics, dead, sink)  # type: ignore[arg-type]  # same note() interface
            attach_learning(app, topics, learning)
            listeners.append(learning.on_new_media)
            metrics.track_users_held(lambda: users_held(tables.user_state))
        if role == "score":
            assert refresher is not None
            attach_scoring(app, topics, runtime, dead, refresher)
        sync = CatalogueSync(runtime, dead, listeners)
        health.catalogue = sync
        if learning is not None:
            learning.catalogue_ready = sync.ready  # no step before the catalogue holds every item known at start
        app.task(sync.run)

        if refresher is not None:
            users_topic = settings.topic_interactions if role == "all" else settings.topic_user_updates
            active = refresher

            @app.on_partitions_revoked.connect
            async def forget_revoked(sender: faust.App, revoked: set[TP], **_: object) -> None:
                active.forget({tp.partition for tp in revoked if tp.topic == users_topic})

            @app.on_before_shutdown.connect
            async def stop_publishing(sender: faust.App, **_: object) -> None:
                active.close()

    return Worker(app=app, topics=topics, tables=tables, runtime=runtime, metrics=metrics, health=health, catalogue=sync)
