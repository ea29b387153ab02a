"""Operations on real worker processes and the suite's broker: /metrics scraped over HTTP while events
flow (faust's series and ours, moving), the health endpoints, and the split roles
(extract + learn + score processes) publishing the same recommendations as `all`."""
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


def test_a_running_worker_is_scraped_and_its_metrics_move_as_events_flow(broker, media: Path, tmp_path: Path):
    settings = worker_settings(broker.bootstrap, tmp_path / "worker", media)
    asyncio.run(prepare_topics(settings))
    with WorkerProcess(settings) as worker:
        ready = wait_ready(worker)
        assert ready["checks"] == {"recovered": True, "model_loaded": True, "catalogue_caught_up": True}
        live = json.loads(get(settings.web_port, "/health/live")[1])
        assert live["status"] == "alive" and live["loop_lag_s"] >= 0

        before = scrape(settings.web_port)
        names = {name for name, _ in before}
        # faust's own series (consumer, producer, tables, rebalances) and ours, from one registry.
        assert {"faust_messages_received_total", "faust_total_rebalances", "faust_assign_latency_count"} <= names
        assert {"mmrec_duplicate_events_total", "mmrec_catalogue_items", "mmrec_users_held", "process_resident_memory_bytes"} <= names
        assert value(before, "mmrec_worker_info", role="all", group=settings.group_id) == 1
        assert value(before, "mmrec_ready") == 1
        assert value(before, "mmrec_catalogue_items") == 0 and value(before, "mmrec_users_held") == 0

        recs = play(broker.bootstrap, settings, media)
        assert {"ann", "ben"} <= {json.loads(r.value)["user_id"] for r in recs}

        def moved() -> bool:
            after = scrape(settings.web_port)
            return value(after, "mmrec_online_step_seconds_count") >= 3 and value(after, "mmrec_interaction_to_recommendation_seconds_count") >= 2
        wait_for(moved, "the step and latency histograms", worker)
        after = scrape(settings.web_port)

    consumed = lambda s, topic: value(s, "mmrec_messages_consumed_total", topic=topic)  # noqa: E731
    assert consumed(after, settings.topic_uploads) - consumed(before, settings.topic_uploads) == len(IMAGES)
    assert consumed(after, settings.topic_interactions) - consumed(before, settings.topic_interactions) == 3
    assert consumed(after, settings.topic_features) == len(IMAGES)
    assert value(after, "mmrec_extraction_batch_size_sum") == len(IMAGES)
    assert value(after, "mmrec_extraction_batch_seconds_count") >= 1
    assert value(after, "mmrec_last_extraction_timestamp_seconds") > time.time() - 120
    assert 0 <= value(after, "mmrec_seconds_since_last_extraction") < 120
    assert value(after, "mmrec_online_step_loss_count") == 3
    assert value(after, "mmrec_recommendations_emitted_total", trigger="interaction") >= 2
    assert value(after, "mmrec_catalogue_items") == len(IMAGES)
    assert value(after, "mmrec_users_held") == 2
    assert value(after, "mmrec_active_users") == 2
    assert any(name == "mmrec_model_info" and v == 1 for (name, _), v in after.items())
    # faust's consumer and producer counters moved too.
    assert value(after, "faust_messages_received_total") > value(before, "faust_messages_received_total")
    assert value(after, "faust_total_sent_messages_total") > value(before, "faust_total_sent_messages_total")
    assert value(after, "faust_topic_messages_sent_total", topic=f"topic.{settings.topic_recommendations}") >= 2
    assert sum(v for (name, _), v in after.items() if name == "faust_table_operations_total") >= 3  # the user-state writes
    assert value(after, "mmrec_dead_letters_total", topic=settings.topic_interactions, reason="invalid_json") == 0


def test_split_roles_extract_learn_score_publish_recommendations(broker, media: Path, tmp_path: Path):
    base = worker_settings(broker.bootstrap, tmp_path / "base", media)
    asyncio.run(prepare_topics(base))
    workers = [
        WorkerProcess(base.model_copy(update={"role": role, "data_dir": tmp_path / role, "web_port": free_port("127.0.0.1")}), role)
        for role in ("extract", "learn", "score")
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
        recs = play(broker.bootstrap, base, media)
        last = {json.loads(r.value)["user_id"]: json.loads(r.value) for r in recs}
        assert {i["media_id"] for i in last["ann"]["items"]}.isdisjoint({"brick", "grass"})
        extract, learn, score = (scrape(w.settings.web_port) for w in workers)
    finally:
        codes = {w.settings.role: w.stop() for w in workers}
    assert codes == {"extract": 0, "learn": 0, "score": 0}, "\n".join(w.log_tail(30) for w in workers)

    # Each role did its own part, in its own consumer group.
    assert value(extract, "mmrec_worker_info", role="extract", group=f"{base.group_id}-extract") == 1
    assert value(extract, "mmrec_extraction_batch_size_sum") == len(IMAGES)
    assert value(extract, "mmrec_online_step_seconds_count") == 0 and ("mmrec_users_held", ()) not in extract
    assert value(learn, "mmrec_worker_info", role="learn", group=base.group_id) == 1
    assert value(learn, "mmrec_online_step_seconds_count") == 3 and value(learn, "mmrec_users_held") == 2
    assert value(learn, "mmrec_user_updates_sent_total") == 3
    assert sum(v for (name, _), v in learn.items() if name == "mmrec_recommendations_emitted_total") == 0
    assert ("mmrec_seconds_since_last_extraction", ()) not in learn
    assert value(score, "mmrec_worker_info", role="score", group=f"{base.group_id}-score") == 1
    assert value(score, "mmrec_messages_consumed_total", topic=base.topic_user_updates) == 3
    assert value(score, "mmrec_recommendations_emitted_total", trigger="interaction") >= 2
    assert value(score, "mmrec_interaction_to_recommendation_seconds_count") >= 2
