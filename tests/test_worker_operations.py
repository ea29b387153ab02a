"""Operations on real worker processes and the suite's broker: /metrics scraped over HTTP while events
flow (faust's series and ours, moving), the health endpoints, and the split roles (extract, learn
and score processes) publishing recommendations. The `all` role's path is tests/test_worker_e2e.py's."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmrec.messages import Interaction, MediaUpload
from mmrec.samples import sample_image
from tests.worker_process import WorkerProcess, collect, prepare_topics, produce, worker_settings
from worker.embedded_broker import free_port

pytestmark = pytest.mark.broker

IMAGES = {"chelsea": "chelsea.png", "coffee": "coffee.png", "brick": "brick.png", "grass": "grass.png"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ops-media")
    for name in IMAGES.values():
        shutil.copy(sample_image(name), folder)
    return folder


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(condition: Callable[[], bool], what: str, worker: WorkerProcess | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass  # the web server is not up yet
        if worker is not None and not worker.alive():
            raise AssertionError(f"the worker died waiting for {what}:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{worker.log_tail()}" if worker else ""))
        time.sleep(0.2)


def wait_ready(worker: WorkerProcess) -> dict:
    port = worker.settings.web_port
    wait_for(lambda: get(port, "/health/live")[0] == 200, "liveness", worker)
    wait_for(lambda: get(port, "/health/ready")[0] == 200, "readiness", worker)
    return json.loads(get(port, "/health/ready")[1])


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def upload(media_id: str, path: Path) -> tuple[bytes, bytes]:
    message = MediaUpload(media_id=media_id, uri=path.as_uri(), media_type="image", created_at=datetime.now(timezone.utc))
    return media_id.encode(), message.to_json()


def interaction(event_id: str, user: str, media_id: str) -> tuple[bytes, bytes]:
    message = Interaction(event_id=event_id, user_id=user, media_id=media_id, kind="click", timestamp=datetime.now(timezone.utc))
    return user.encode(), message.to_json()


def triggers(records) -> set[str]:  # noqa: ANN001
    return {json.loads(r.value)["trigger"].get("event_id") for r in records}


def play(bootstrap: str, settings, media: Path) -> list:  # noqa: ANN001
    """Uploads the four images, then two users' clicks; returns the recommendations of both."""
    asyncio.run(produce(bootstrap, settings.topic_uploads, [upload(m, media / f) for m, f in IMAGES.items()]))
    asyncio.run(collect(bootstrap, settings.topic_features, lambda rs: len(rs) >= len(IMAGES)))
    events = [interaction("a0", "ann", "brick"), interaction("a1", "ann", "grass"), interaction("b0", "ben", "chelsea")]
    asyncio.run(produce(bootstrap, settings.topic_interactions, events))
    return asyncio.run(collect(bootstrap, settings.topic_recommendations, lambda rs: {"a1", "b0"} <= triggers(rs)))


def test_workers_of_each_role_are_scraped_and_their_metrics_move_as_events_flow(broker, media: Path, tmp_path: Path):
    """extract + learn (RocksDB tables, the production default) + score processes, one consumer group
    each; /health and /metrics of every one over HTTP, before and after uploads and interactions."""
    base = worker_settings(broker.bootstrap, tmp_path / "base", media)
    asyncio.run(prepare_topics(base))
    stores = {"extract": "memory", "learn": "rocksdb", "score": "memory"}
    workers = [
        WorkerProcess(
            base.model_copy(update={"role": role, "data_dir": tmp_path / role, "web_port": free_port("127.0.0.1"), "table_store": store}), role
        )
        for role, store in stores.items()
    ]
    for worker in workers:
        worker.start()
    try:
        readiness = {w.settings.role: wait_ready(w)["checks"] for w in workers}
        assert readiness == {
            "extract": {"recovered": True, "model_loaded": True},
            "learn": {"recovered": True, "model_loaded": True, "catalogue_caught_up": True},
            "score": {"recovered": True, "model_loaded": True, "catalogue_caught_up": True},
        }
        for w in workers:
            live = json.loads(get(w.settings.web_port, "/health/live")[1])
            assert live["status"] == "alive" and live["loop_lag_s"] >= 0
        before = [scrape(w.settings.web_port) for w in workers]
        for samples in before:
            names = {name for name, _ in samples}
            # faust's own series (consumer, producer, rebalances) and ours, from one registry.
            assert {"faust_messages_received_total", "faust_total_rebalances", "faust_assign_latency_count"} <= names
            assert {"mmrec_duplicate_events_total", "mmrec_catalogue_items", "mmrec_ready", "process_resident_memory_bytes"} <= names
            assert value(samples, "mmrec_ready") == 1 and value(samples, "mmrec_catalogue_items") == 0

        recs = play(broker.bootstrap, base, media)
        last = {json.loads(r.value)["user_id"]: json.loads(r.value) for r in recs}
        assert {i["media_id"] for i in last["ann"]["items"]}.isdisjoint({"brick", "grass"})

        seen: dict[str, float] = {}

        def moved() -> bool:
            learn, score = (scrape(w.settings.web_port) for w in workers[1:])
            seen.update(
                steps=value(learn, "mmrec_online_step_seconds_count"),
                latencies=value(score, "mmrec_interaction_to_recommendation_seconds_count"),
                items=value(score, "mmrec_catalogue_items"),
            )
            return seen["steps"] >= 3 and seen["latencies"] >= 2 and seen["items"] == len(IMAGES)
        try:
            wait_for(moved, "the step and latency histograms", workers[2])
        except AssertionError as exc:
            raise AssertionError(f"last seen: {seen}") from exc
        extract, learn, score = (scrape(w.settings.web_port) for w in workers)
    finally:
        codes = {w.settings.role: w.stop() for w in workers}
    assert codes == {"extract": 0, "learn": 0, "score": 0}, "\n".join(w.log_tail(30) for w in workers)

    consumed = lambda s, topic: value(s, "mmrec_messages_consumed_total", topic=topic)  # noqa: E731
    # extract: its own consumer group; uploads consumed, batches timed, features published.
    assert value(extract, "mmrec_worker_info", role="extract", group=f"{base.group_id}-extract") == 1
    assert consumed(extract, base.topic_uploads) - consumed(before[0], base.topic_uploads) == len(IMAGES)
    assert value(extract, "mmrec_extraction_batch_size_sum") == len(IMAGES)
    assert value(extract, "mmrec_extraction_batch_seconds_count") >= 1
    assert value(extract, "mmrec_last_extraction_timestamp_seconds") > time.time() - 120
    assert 0 <= value(extract, "mmrec_seconds_since_last_extraction") < 120
    assert value(extract, "faust_topic_messages_sent_total", topic=f"topic.{base.topic_features}") == len(IMAGES)
    assert value(extract, "mmrec_online_step_seconds_count") == 0 and ("mmrec_users_held", ()) not in extract
    # learn: the group that owns the tables; steps, loss, users held (RocksDB's estimate), updates sent.
    assert value(learn, "mmrec_worker_info", role="learn", group=base.group_id) == 1
    assert consumed(learn, base.topic_interactions) == 3 and consumed(learn, base.topic_features) == len(IMAGES)
    assert value(learn, "mmrec_online_step_seconds_count") == 3 and value(learn, "mmrec_online_step_loss_count") == 3
    # RocksDB's estimate-num-keys: overwritten keys and faust's per-partition offset key count until a
    # compaction, so it is approximate (the memory store is exact: tests/test_health_units.py).
    assert 2 <= value(learn, "mmrec_users_held") <= 3 + 2 * (3 + 1)
    assert value(learn, "mmrec_user_updates_sent_total") == 3
    assert sum(v for (name, _), v in learn.items() if name == "faust_table_operations_total") >= 3  # the user-state writes
    assert sum(v for (name, _), v in learn.items() if name == "mmrec_recommendations_emitted_total") == 0
    assert ("mmrec_seconds_since_last_extraction", ()) not in learn
    # score: its own group; updates consumed, lists emitted, end-to-end latency observed.
    assert value(score, "mmrec_worker_info", role="score", group=f"{base.group_id}-score") == 1
    assert consumed(score, base.topic_user_updates) == 3
    assert value(score, "mmrec_recommendations_emitted_total", trigger="interaction") >= 2
    assert value(score, "mmrec_interaction_to_recommendation_seconds_count") >= 2
    # every list an interaction triggered comes from a timed refresh call (a new item's list may as well)
    emitted = sum(v for (name, _), v in score.items() if name == "mmrec_recommendations_emitted_total")
    refreshed = value(score, "mmrec_refreshed_users_total")
    assert value(score, "mmrec_recommendations_emitted_total", trigger="interaction") <= refreshed <= emitted
    assert value(score, "mmrec_refresh_seconds_count") >= 1
    assert value(learn, "mmrec_refreshed_users_total") == 0
    assert value(score, "mmrec_active_users") == 2 and value(score, "mmrec_catalogue_items") == len(IMAGES)
    assert any(name == "mmrec_model_info" and v == 1 for (name, _), v in score.items())
    assert value(score, "faust_topic_messages_sent_total", topic=f"topic.{base.topic_recommendations}") >= 2
    for after, earlier in zip((extract, learn, score), before):
        assert value(after, "faust_messages_received_total") > value(earlier, "faust_messages_received_total")
        assert sum(v for (name, _), v in after.items() if name == "mmrec_dead_letters_total") == 0
