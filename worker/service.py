"""Assembles one worker process: the App, the mmrec runtime and the agents of the chosen role."""
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
from worker.learn_agent import Learning, attach_learning
from worker.metrics import Metrics
from worker.refresh import Refresher
from worker.runtime import Runtime


@dataclass(frozen=True)
class Worker:
    app: faust.App
    topics: Topics
    tables: Tables
    runtime: Runtime
    metrics: Metrics


def create_worker(settings: Settings, metrics: Metrics | None = None, *, web_enabled: bool = True) -> Worker:
    """The App with every agent, task and hook of settings.role wired to a fresh Runtime."""
    metrics = metrics or Metrics()
    app, topics, tables = build_app(settings, web_enabled=web_enabled)
    if web_enabled:
        setup_prometheus_sensors(app, registry=metrics.registry)
    runtime = Runtime(settings, metrics)
    dead = DeadLetters(topics.dead_letter, metrics, settings.client_id)

    if settings.role in ("extract", "all"):
        fetcher = MediaFetcher(settings)
        attach_extraction(app, topics, runtime, dead, fetcher)

        @app.on_before_shutdown.connect
        async def close_fetcher(sender: faust.App, **_: object) -> None:
            await fetcher.close()

    if settings.role in ("learn", "all"):
        refresher = Refresher(runtime, topics.recommendations)
        learning = Learning(runtime, tables, topics, dead, refresher)
        attach_learning(app, topics, learning)
        sync = CatalogueSync(runtime, dead, [refresher.on_new_items, learning.on_new_media])
        app.task(sync.run)
        app.task(refresher.run)

        @app.on_partitions_revoked.connect
        async def forget_revoked(sender: faust.App, revoked: set[TP], **_: object) -> None:
            refresher.forget({tp.partition for tp in revoked if tp.topic == settings.topic_interactions})

    return Worker(app=app, topics=topics, tables=tables, runtime=runtime, metrics=metrics)
