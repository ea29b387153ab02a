"""Plain aiokafka clients configured from the settings (the catalogue sync, topic creation, tools)."""
from __future__ import annotations

import ssl
from typing import Any

from mmrec.settings import Settings
from worker.kafka_admin import TopicSpec


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS context for SSL and SASL_SSL (None otherwise): CA bundle, optional client certificate."""
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.ssl_certfile:
        context.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile) if settings.ssl_keyfile else None)
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """aiokafka client keyword arguments: bootstrap, client id and security."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.password()
    return kwargs


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic the worker needs, with the partition count users are spread over.

    Interactions, recommendations, wakeups and user updates are keyed by user id and must share the
    tables' partition count; the features topic is compacted (the latest record per media id matters).
    """
    p, r = settings.partitions, settings.replication_factor
    return [
        TopicSpec(settings.topic_uploads, p, r),
        TopicSpec(settings.topic_interactions, p, r),
        TopicSpec(settings.topic_recommendations, p, r),
        TopicSpec(settings.topic_dead_letter, p, r),
        TopicSpec(settings.topic_features, p, r, {"cleanup.policy": "compact"}),
        TopicSpec(settings.topic_wakeups, p, r),
        TopicSpec(settings.topic_user_updates, p, r),
    ]
