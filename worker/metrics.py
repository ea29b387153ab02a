"""mmrec's own Prometheus metrics, registered in the registry faust's sensor serves on /metrics.

Each worker gets its own CollectorRegistry (process and Python collectors included), so building
two workers in one process (tests) never registers a name twice, and `/metrics` serves exactly one
worker's series: faust's (`faust_*`, see worker/service.py) and ours (`mmrec_*`).
"""
from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def worker_registry() -> CollectorRegistry:
    """A fresh registry with the standard process_*, python_gc_* and python_info series."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class Metrics:
    """One instance per worker process (a fresh registry unless one is given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = worker_registry() if registry is None else registry
        self.started_at = time.time()
        self.worker_info = Gauge(
            "mmrec_worker_info", "This worker's role and consumer group (value 1).", ["role", "group"], registry=registry
        )
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
            "mmrec_last_extraction_timestamp_seconds", "Unix time of the last successful extraction (0: none yet).", registry=registry
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
        self.refresh_seconds = Histogram(
            "mmrec_refresh_seconds", "Scoring time of one refresh call (a batch of users ranked together).", buckets=_LATENCY_BUCKETS, registry=registry
        )
        self.refreshed_users = Counter("mmrec_refreshed_users_total", "Users ranked by refresh calls.", registry=registry)
        self.recommendations = Counter(
            "mmrec_recommendations_emitted_total", "Recommendation lists sent, by trigger.", ["trigger"], registry=registry
        )
        self.user_updates = Counter(
            "mmrec_user_updates_sent_total", "User updates sent from the learn role to the score role.", registry=registry
        )
        self.users = Gauge("mmrec_active_users", "Users active recently on this worker (refreshed on new media).", registry=registry)
        self.items = Gauge("mmrec_catalogue_items", "Items in this worker's catalogue.", registry=registry)
        self.model_info = Gauge("mmrec_model_info", "The loaded model and feature versions (value 1).", ["model", "features"], registry=registry)
        self.ready = Gauge("mmrec_ready", "1 when /health/ready answers 200 (recovered, model loaded, catalogue caught up).", registry=registry)
        self.loop_lag = Histogram(
            "mmrec_event_loop_lag_seconds", "How late a 0.25 s sleep on the event loop wakes up (blocking work shows here).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0), registry=registry,
        )

    def track_extraction_staleness(self) -> None:
        """Adds mmrec_seconds_since_last_extraction (extracting roles only: elsewhere it would only grow)."""
        def since() -> float:
            last = self.last_extraction._value.get()
            return time.time() - (last or self.started_at)

        Gauge(
            "mmrec_seconds_since_last_extraction",
            "Seconds since the last successful extraction (since the worker started, if none yet).",
            registry=self.registry,
        ).set_function(since)

    def track_users_held(self, count: Callable[[], float]) -> None:
        """Adds mmrec_users_held, computed at scrape time (learning roles: users in the state table)."""
        Gauge(
            "mmrec_users_held",
            "Users whose state this worker's table holds, active partitions (RocksDB: its estimate-num-keys, which "
            "counts overwritten keys and faust's offset key until compaction; memory store: exact).",
            registry=self.registry,
        ).set_function(count)
