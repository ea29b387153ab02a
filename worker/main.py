"""`mmrec worker`: run one worker process against the configured Kafka cluster until SIGINT/SIGTERM."""
from __future__ import annotations

import argparse
import asyncio
import logging

import faust

from mmrec.settings import Settings
from worker.kafka_admin import ensure_topics
from worker.kafka_client import client_kwargs, topic_specs
from worker.service import ROLES, create_worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", choices=list(ROLES), help="overrides MMREC_ROLE (extract, learn, score, or all in one process)")
    parser.add_argument("--create-topics", action="store_true", default=None, help="overrides MMREC_CREATE_TOPICS")


async def create_topics(settings: Settings) -> None:
    kwargs = client_kwargs(settings)
    bootstrap = kwargs.pop("bootstrap_servers")
    kwargs.pop("client_id")
    created = await ensure_topics(bootstrap, topic_specs(settings), **kwargs)
    logging.getLogger(__name__).info("topics: %s", ", ".join(f"{n}{' (created)' if c else ''}" for n, c in created.items()))


def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("role", args.role), ("create_topics", args.create_topics)) if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.create_topics:
        asyncio.run(create_topics(settings))
    worker = create_worker(settings)
    faust_worker(worker.app, settings.log_level).execute_from_commandline()
    return 0


def faust_worker(app: faust.App, log_level: str) -> faust.Worker:
    """The faust process runner, without its terminal spinner: kept at log levels of WARNING and
    above, the spinner sets the root logger to DEBUG so that every record turns it, and every debug
    call of aiokafka, faust and mode then builds a LogRecord (measured: 3 % of a stream worker's CPU)."""
    process = faust.Worker(app, loglevel=log_level, quiet=True)
    process.spinner = None
    return process
