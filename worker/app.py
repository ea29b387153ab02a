"""Builds the faust App and its topics and tables from the settings; nothing else happens here."""
from __future__ import annotations

from dataclasses import dataclass

import faust
from faust.types import TopicT

from mmrec.settings import Settings
from worker.delivering_producer import DeliveringApp
from worker.kafka_client import ssl_context
from worker.recovery import SeekFirstTableManager


@dataclass(frozen=True)
class Topics:
    """Every topic the worker reads or writes; keys and values are raw bytes (we validate them)."""

    uploads: TopicT
    interactions: TopicT
    recommendations: TopicT
    dead_letter: TopicT
    features: TopicT
    wakeups: TopicT
    user_updates: TopicT


@dataclass(frozen=True)
class Tables:
    """user_state: user id -> encoded UserState; pending: user id -> events waiting for media."""

    user_state: faust.Table
    pending: faust.Table


def broker_credentials(settings: Settings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust credentials for the configured security protocol (None for PLAINTEXT)."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.password(),
        mechanism=settings.sasl_mechanism,
        ssl_context=context,
    )


def build_app(
    settings: Settings, *, app_id: str | None = None, with_tables: bool = True, web_enabled: bool = True
) -> tuple[faust.App, Topics, Tables | None]:
    """The App for these settings (faust id and consumer group: app_id, default the group id);
    the user tables only when with_tables. Agents are attached by worker.service."""
    if not settings.bootstrap_servers:
        raise ValueError("MMREC_BOOTSTRAP_SERVERS is not set")
    brokers = ";".join(f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",") if b.strip())
    app = DeliveringApp(
        app_id or settings.group_id,
        broker=brokers,
        broker_credentials=broker_credentials(settings),
        broker_client_id=settings.client_id,
        consumer_group_instance_id=settings.group_instance_id,
        store=f"{settings.table_store}://",
        datadir=str(settings.data_dir / "tables"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",  # exactly_once has open duplicate bugs; updates are idempotent instead
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_rebalance_timeout=settings.session_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        producer_max_batch_size=settings.producer_max_batch_size,
        producer_linger=settings.producer_linger_ms / 1000,
        recovery_consistency_check=False,  # see docs/design.md, "Delivery guarantee"
        TableManager=SeekFirstTableManager,
        web_enabled=web_enabled,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        loghandlers=[],
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    keyed = {**raw, "partitions": settings.partitions}
    topics = Topics(
        uploads=app.topic(settings.topic_uploads, **raw),
        interactions=app.topic(settings.topic_interactions, **keyed),
        recommendations=app.topic(settings.topic_recommendations, **keyed),
        dead_letter=app.topic(settings.topic_dead_letter, **raw),
        features=app.topic(settings.topic_features, **raw),
        wakeups=app.topic(settings.topic_wakeups, **keyed),
        user_updates=app.topic(settings.topic_user_updates, **keyed),
    )
    if not with_tables:
        return app, topics, None
    # bytes key and value types select faust's raw codec: no pickle, no JSON wrapping.
    table = {"default": None, "key_type": bytes, "value_type": bytes, "partitions": settings.partitions, "options": _store_options(settings)}
    tables = Tables(user_state=app.Table("user_state", **table), pending=app.Table("pending", **table))
    return app, topics, tables


def _store_options(settings: Settings) -> dict[str, int] | None:
    """RocksDB memory bounds per table partition (faust's defaults allow 3 x 64 MB of memtables and a
    2 GB cache each: measured, a soak's RSS grew with the memtables for hours before a flush)."""
    if settings.table_store != "rocksdb":
        return None
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb << 20,
    }
