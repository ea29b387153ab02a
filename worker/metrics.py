"""mmrec's own Prometheus metrics, registered in the registry faust's sensor serves on /metrics."""
from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """One instance per worker process; pass a fresh CollectorRegistry in tests."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.consumed = Counter("mmrec_messages_consumed_total", "Messages read, by topic.", ["topic"], registry=registry)
        self.failed = Counter(
            "mmrec_messages_failed_total", "Messages that could not be processed, by topic and reason.", ["topic", "reason"], registry=registry
        )
        self.dead_lettered = Counter(
            "mmrec_dead_letters_total", "Messages sent to the dead-letter topic, by source topic and reason.", ["topic", "reason"], registry=registry
        )
        self.duplicates = Counter("mmrec_duplicate_events_total", "Interaction events skipped as already applied.", registry=registry)
        self.extraction_seconds = Histogram(
            "mmrec_extraction_batch_seconds", "Wall time of one extraction batch (fetch excluded).", buckets=_LATENCY_BUCKETS, registry=registry
        )
        self.extraction_batch = Histogram(
            "mmrec_extraction_batch_size", "Media per extraction batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=registry
        )
        self.fetch_seconds = Histogram("mmrec_fetch_seconds", "Time to fetch one media file.", buckets=_LATENCY_BUCKETS, registry=registry)
        self.last_extraction = Gauge(
            "mmrec_last_extraction_timestamp_seconds", "Unix time of the last successful extraction.", registry=registry
        )
        self.step_seconds = Histogram("mmrec_online_step_seconds", "Latency of one online step.", buckets=_LATENCY_BUCKETS, registry=registry)
        self.step_loss = Histogram(
            "mmrec_online_step_loss", "Loss of an event before its step.", buckets=(0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 2.5, 5.0), registry=registry
        )
        self.pending = Gauge("mmrec_pending_events", "Interaction events waiting for their media's features.", registry=registry)
        self.refresh_latency = Histogram(
            "mmrec_interaction_to_recommendation_seconds",
            "From an interaction's timestamp to its refreshed recommendations being sent.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.recommendations = Counter(
            "mmrec_recommendations_emitted_total", "Recommendation lists sent, by trigger.", ["trigger"], registry=registry
        )
        self.users = Gauge("mmrec_active_users", "Users active recently on this worker (refreshed on new media).", registry=registry)
        self.items = Gauge("mmrec_catalogue_items", "Items in this worker's catalogue.", registry=registry)
        self.model_info = Gauge("mmrec_model_info", "The loaded model and feature versions (value 1).", ["model", "features"], registry=registry)
