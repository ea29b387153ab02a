"""Topic administration with aiokafka's admin client: idempotent create, list, describe.

Faust creates only its own internal topics (changelogs, repartition); source and sink topics are
ours to create, keyed by user id and with the tables' partition count.

Beware: Tansu auto-creates a topic, with 4 partitions, when any client asks for metadata of a missing
topic with allow_auto_topic_creation=True, which aiokafka's producer and consumer (hence faust) always
send. Create topics before anything produces to or subscribes to them. Describing here sends
allow_auto_topic_creation=False, so it never creates anything.
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.metadata import MetadataRequest

__all__ = ["TopicSpec", "TopicMismatchError", "admin_client", "ensure_topics", "describe_topics",
           "list_topics", "partition_counts"]

_TOPIC_ALREADY_EXISTS = TopicAlreadyExistsError.errno  # 36


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    replication: int = 1
    configs: Mapping[str, str] = field(default_factory=dict)


class TopicMismatchError(RuntimeError):
    """A topic exists with another partition count than the one asked for."""


def admin_client(bootstrap: str, **kwargs) -> AIOKafkaAdminClient:
    """An unstarted admin client; `kwargs` pass through (security_protocol, sasl_*, ssl_context...)."""
    kwargs.setdefault("request_timeout_ms", 10_000)
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kwargs)


async def ensure_topics(bootstrap: str, specs: Iterable[TopicSpec], *, timeout_s: float = 10.0,
                        **client_kwargs) -> dict[str, bool]:
    """Create the topics that do not exist yet; returns {name: created_now}.

    A topic that already exists is fine if its partition count matches; otherwise TopicMismatchError
    (co-partitioning with tables depends on it, and Tansu cannot add partitions). Configs of an
    existing topic are not compared or altered.
    """
    specs = list(specs)
    if not specs:
        return {}
    admin = admin_client(bootstrap, **client_kwargs)
    await admin.start()
    try:
        resp = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication, topic_configs={k: str(v) for k, v in s.configs.items()})
             for s in specs],
            timeout_ms=int(timeout_s * 1000),
        )
        created: dict[str, bool] = {}
        for err in resp.topic_errors:  # (name, error_code[, error_message])
            name, code = err[0], err[1]
            if code == 0:
                created[name] = True
            elif code == _TOPIC_ALREADY_EXISTS:
                created[name] = False
            else:
                message = err[2] if len(err) > 2 else None
                raise for_code(code)(f"create topic {name!r}: {message}")
        existing = await _partition_counts(admin, [s.name for s in specs], timeout_s)
        for s in specs:
            if existing.get(s.name) != s.partitions:
                raise TopicMismatchError(
                    f"topic {s.name!r} has {existing.get(s.name)} partitions, expected {s.partitions}")
        return created
    finally:
        await admin.close()


async def describe_topics(bootstrap: str, names: Iterable[str] | None = None, **client_kwargs) -> list[dict]:
    """Metadata of the topics (all when `names` is None): dicts with 'topic', 'error_code', 'partitions'.
    A missing topic comes back with error_code 3 (UNKNOWN_TOPIC_OR_PARTITION) and is not created."""
    admin = admin_client(bootstrap, **client_kwargs)
    await admin.start()
    try:
        return await _describe(admin, None if names is None else list(names))
    finally:
        await admin.close()


async def list_topics(bootstrap: str, **client_kwargs) -> list[str]:
    admin = admin_client(bootstrap, **client_kwargs)
    await admin.start()
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


async def partition_counts(bootstrap: str, names: Iterable[str], **client_kwargs) -> dict[str, int]:
    """{name: partition count} for the topics that exist; missing ones are left out."""
    admin = admin_client(bootstrap, **client_kwargs)
    await admin.start()
    try:
        return await _partition_counts(admin, list(names), 0.0)
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str], wait_s: float) -> dict[str, int]:
    # Right after CreateTopics the metadata can lag a moment (LEADER_NOT_AVAILABLE / no partitions).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        topics = await _describe(admin, names)
        counts = {t["topic"]: len(t["partitions"]) for t in topics if t["error_code"] == 0 and t["partitions"]}
        if len(counts) == len(set(names)) or loop.time() >= deadline:
            return counts
        await asyncio.sleep(0.05)


async def _describe(admin: AIOKafkaAdminClient, names: list[str] | None) -> list[dict]:
    # admin.describe_topics() would send allow_auto_topic_creation=True and create missing topics.
    # _send_request is aiokafka-private but stable since 0.8; pinned by aiokafka<0.15 in pyproject.
    response = await admin._send_request(MetadataRequest(names, allow_auto_topic_creation=False))
    return response.to_object()["topics"]
