"""The refresher: batches capped in scored pairs, compact per-user state, lists equal to the
recommender's (through the retrieval stage on large catalogues), new media merged into lists."""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import numpy as np
import torch

from mmrec.catalogue import Catalogue
from mmrec.messages import Trigger
from mmrec.model import ModelConfig, ParamLayout, SharedParams
from mmrec.recommend import Recommender
from mmrec.retrieval import RetrievalConfig
from mmrec.settings import Settings
from mmrec.user_state import UserState, id_hash
from tests.synthetic_items import VERSION, make_items
from worker import refresh
from worker.metrics import Metrics
from worker.refresh import Refresher, _merge

CFG = ModelConfig()


class Topic:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send(self, key: bytes, value: bytes) -> None:
        self.sent.append(json.loads(value))


def runtime(items: int, retrieval: RetrievalConfig) -> SimpleNamespace:
    catalogue = Catalogue(VERSION)
    catalogue.add(make_items(items))
    shared = SharedParams.initial(CFG)

    async def on_model_thread(fn, *args):  # noqa: ANN001, ANN202
        return fn(*args)

    return SimpleNamespace(
        settings=Settings(top_k=5, refresh_debounce_ms=0, refresh_batch=64),
        catalogue=catalogue,
        recommender=Recommender(CFG, shared, retrieval),
        metrics=Metrics(),
        on_model_thread=on_model_thread,
        model_version="m",
        feature_version=VERSION,
    )


def state(seed: int, seen: tuple[int, ...] = ()) -> UserState:
    s = UserState.new(CFG)
    s.offsets = 0.3 * torch.randn(ParamLayout(CFG).size, generator=torch.Generator().manual_seed(seed))
    s.seen = seen
    return s


def test_lists_are_the_recommenders_and_batches_are_capped_in_pairs(monkeypatch):
    rt = runtime(60, RetrievalConfig(mode="shortlist", shortlist_min=30, shortlist_factor=1))
    topic = Topic()
    refresher = Refresher(rt, topic)  # type: ignore[arg-type]
    monkeypatch.setattr(refresh, "_PAIRS_PER_BATCH", 90)
    assert refresher.batch_size() == 3  # 90 pairs / 30 per user
    users = {f"u{i}": state(i, seen=(id_hash("m0000001"),) if i == 0 else ()) for i in range(7)}
    for user, s in users.items():
        refresher.note(user, s, 0, Trigger(kind="interaction", event_id=f"e-{user}"), None, True)
    calls = []
    real = rt.recommender.top_k_rows
    rt.recommender.top_k_rows = lambda offsets, *a: calls.append(offsets.shape[0]) or real(offsets, *a)

    async def one_pass() -> None:
        task = asyncio.create_task(refresher.run())
        while refresher.dirty or len(topic.sent) < 7:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(one_pass())
    assert calls == [3, 3, 1]
    for message in topic.sent:
        s = users[message["user_id"]]
        want = rt.recommender.top_k(s.offsets[None], rt.catalogue, 5, [s.seen])[0]
        assert [i["media_id"] for i in message["items"]] == [r.media_id for r in want]
        assert message["trigger"]["event_id"] == f"e-{message['user_id']}"
    active = refresher.active["u0"]
    assert isinstance(active.offsets, bytes) and active.top_rows is not None and len(active.top_rows) == 5
    assert "m0000001" not in [i["media_id"] for i in topic.sent[0]["items"] if topic.sent[0]["user_id"] == "u0"]


def test_merge_keeps_the_best_k_and_replaces_rescored_rows():
    rows, scores = np.array([4, 7, 9]), np.array([3.0, 2.0, 1.0], dtype=np.float32)
    merged_rows, merged_scores = _merge(rows, scores, np.array([7, 11]), np.array([0.5, 2.5]), 3)
    assert merged_rows.tolist() == [4, 11, 9] and merged_scores.tolist() == [3.0, 2.5, 1.0]


def test_users_idle_past_the_window_are_evicted_and_the_rest_kept(monkeypatch):
    """`active` stays in order of last activity (a noted user moves to the end), so eviction walks
    only the idle front; a user still waiting for a refresh is never dropped."""
    rt = runtime(10, RetrievalConfig(mode="exact"))
    rt.settings = Settings(top_k=5, refresh_debounce_ms=0, active_user_window_s=100)
    refresher = Refresher(rt, Topic())  # type: ignore[arg-type]
    clock = [1_000.0]
    monkeypatch.setattr(refresh.time, "time", lambda: clock[0])
    trigger = Trigger(kind="interaction", event_id="e")
    for t, user in [(0, "a"), (10, "b"), (20, "c"), (30, "d"), (40, "a")]:  # "a" is active again at 40
        clock[0] = 1_000.0 + t
        refresher.note(user, state(0), 0, trigger, None, True)
    assert list(refresher.active) == ["b", "c", "d", "a"]
    refresher.dirty = {"c": refresher.dirty["c"]}  # c still waits for its refresh
    clock[0] = 1_000.0 + 125  # horizon 25: b (10) goes, c (20) waits for its refresh, d (30) is recent
    refresher._evict_inactive()
    assert list(refresher.active) == ["c", "d", "a"]
    clock[0] = 1_000.0 + 200
    refresher.dirty = {}
    refresher._evict_inactive()
    assert list(refresher.active) == []


def test_a_closed_refresher_publishes_nothing_and_its_loop_ends():
    """Closed before the app's producer stops (worker.service): a send after that would crash the app."""
    rt = runtime(20, RetrievalConfig(mode="exact"))
    topic = Topic()
    refresher = Refresher(rt, topic)  # type: ignore[arg-type]
    refresher.note("u1", state(1), 0, Trigger(kind="interaction", event_id="e1"), None, True)
    refresher.close()

    async def run_and_offer_items() -> None:
        await asyncio.wait_for(refresher.run(), timeout=5)
        await refresher.on_new_items([rt.catalogue.ids[0]])

    asyncio.run(run_and_offer_items())
    assert topic.sent == []


def test_a_refresher_that_is_behind_waits_for_full_batches_and_one_that_keeps_up_does_not(monkeypatch):
    """refresh_fill_ms: once the longest-pending user's event is older than it, pending users wait (at
    most that long again) for a full batch, which costs less per user; fresh events are refreshed at once."""
    rt = runtime(60, RetrievalConfig(mode="shortlist", shortlist_min=30, shortlist_factor=1))
    rt.settings = Settings(top_k=5, refresh_debounce_ms=0, refresh_batch=64, refresh_fill_ms=1500)
    monkeypatch.setattr(refresh, "_PAIRS_PER_BATCH", 90)  # 3 users per batch
    topic = Topic()
    refresher = Refresher(rt, topic)  # type: ignore[arg-type]
    calls = []
    real = rt.recommender.top_k_rows
    rt.recommender.top_k_rows = lambda offsets, *a: calls.append(offsets.shape[0]) or real(offsets, *a)

    def note(i: int, age_s: float) -> None:
        refresher.note(f"u{i}", state(i), 0, Trigger(kind="interaction", event_id=f"e{i}"), time.time() - age_s, True)

    async def scenario() -> float:
        task = asyncio.create_task(refresher.run())
        note(0, age_s=0.0), note(1, age_s=0.0)  # keeping up: no wait
        await asyncio.wait_for(_until(lambda: len(topic.sent) >= 2), timeout=0.75)
        assert calls == [2]
        note(2, age_s=5.0), note(3, age_s=5.0)  # behind: waits for a third
        await asyncio.sleep(0.1)
        assert calls == [2] and len(topic.sent) == 2
        note(4, age_s=0.0)
        await asyncio.wait_for(_until(lambda: len(topic.sent) >= 5), timeout=5)
        assert calls == [2, 3]
        started = time.monotonic()
        note(5, age_s=5.0)  # behind and alone: waits out the fill, then goes
        await asyncio.wait_for(_until(lambda: len(topic.sent) >= 6), timeout=5)
        task.cancel()
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 1.5 and calls == [2, 3, 1]


def test_users_revoked_while_the_refresher_waits_for_a_batch_are_dropped_and_it_goes_on(monkeypatch):
    """A rebalance may take every pending user away during the wait for a full batch: nothing is
    refreshed for them, and the refresher keeps serving the users it still owns."""
    rt = runtime(60, RetrievalConfig(mode="shortlist", shortlist_min=30, shortlist_factor=1))
    rt.settings = Settings(top_k=5, refresh_debounce_ms=0, refresh_batch=64, refresh_fill_ms=300)
    monkeypatch.setattr(refresh, "_PAIRS_PER_BATCH", 90)  # 3 users per batch
    topic = Topic()
    refresher = Refresher(rt, topic)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(refresher.run())
        refresher.note("gone", state(0), 3, Trigger(kind="interaction", event_id="e0"), time.time() - 5, True)
        await asyncio.sleep(0.1)  # behind: waiting for a full batch
        refresher.forget({3})
        await asyncio.sleep(0.4)  # past the fill: nothing left to refresh
        refresher.note("kept", state(1), 1, Trigger(kind="interaction", event_id="e1"), time.time(), True)
        await asyncio.wait_for(_until(lambda: topic.sent), timeout=5)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())
    assert [m["user_id"] for m in topic.sent] == ["kept"]


async def _until(condition) -> None:  # noqa: ANN001
    while not condition():
        await asyncio.sleep(0.005)
