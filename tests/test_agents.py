"""Fast agent unit tests through faust's test_context (no broker): validation, idempotency, waiting."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from unittest.mock import AsyncMock, patch

import pytest
import torch
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from mmrec.artifact import ModelArtifact, save_artifact
from mmrec.features import FeatureVersion
from mmrec.item_codec import encode_item
from mmrec.model import ParamLayout, SharedParams

from mmrec.interaction_step import InteractionLearner
from mmrec.messages import Interaction
from mmrec.settings import Settings
from mmrec.user_state import decode_user_state, encode_user_state
from tests.synthetic_items import make_item
from worker.metrics import Metrics
from worker.pending import decode_pending
from worker.service import Worker, create_worker


def make_worker(data_dir: Path, **overrides: object) -> Worker:
    """A worker whose broker is never contacted, with six catalogue items m0..m5."""
    settings = Settings(**{"bootstrap_servers": "127.0.0.1:1", "data_dir": data_dir, "table_store": "memory", "partitions": 1, **overrides})
    built = create_worker(settings, Metrics(CollectorRegistry()), web_enabled=False)
    built.app.finalize()
    built.app.flow_control.resume()
    version = built.runtime.feature_version
    built.runtime.catalogue.add([make_item(f"m{i}", seed=i, version=version) for i in range(6)])
    built.runtime.apply_item_bias([f"m{i}" for i in range(6)])  # as the catalogue sync does
    if built.catalogue is not None:  # the extract role keeps no catalogue copy
        built.catalogue.mark_caught_up()  # the learning agents wait for it
    return built


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    built = make_worker(tmp_path)
    yield built
    built.runtime.close()


def event(event_id: str, user: str = "u1", media: str = "m1", **fields: object) -> bytes:
    message = Interaction(event_id=event_id, user_id=user, media_id=media, kind="click", timestamp=datetime.now(timezone.utc), **fields)
    return message.to_json()


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until condition() holds: put() returns before the agent has processed the event."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def version_of(worker: Worker, user: bytes) -> int:
    raw = worker.tables.user_state.get(user)
    return -1 if raw is None else decode_user_state(raw, worker.runtime.cfg).version


def sent(mock: AsyncMock) -> list[dict]:
    return [json.loads(call.kwargs["value"]) for call in mock.call_args_list]


async def test_learn_applies_each_event_once_and_marks_the_user_for_refresh(worker: Worker):
    cfg = worker.runtime.cfg
    async with worker.app.agents["learn"].test_context() as agent:
        await agent.put(key=b"u1", value=event("e1"))
        await agent.put(key=b"u1", value=event("e2", media="m2"))
        await agent.put(key=b"u1", value=event("e1"))  # re-sent by the producer: new offset, same id
        await agent.put(key=b"u1", value=event("e3", media="m3"))
        await eventually(lambda: version_of(worker, b"u1") == 3)
    assert worker.metrics.duplicates._value.get() == 1
    state = decode_user_state(worker.tables.user_state[b"u1"], cfg)
    assert state.offsets.abs().sum() > 0 and len(state.seen) == 3
    assert worker.runtime.metrics.step_seconds._sum.get() > 0


async def test_a_batch_steps_each_user_in_order_and_writes_their_state_to_their_own_partition(tmp_path: Path):
    """Events of two users on two partitions, handled as one batch: each user's events are stepped
    in order, their state is written once, and faust sends its changelog record to the user's
    partition (faust takes it from the current event, which a batch must set)."""
    worker = make_worker(tmp_path, partitions=2, learn_batch=64, learn_batch_wait_ms=300)
    table = worker.tables.user_state
    with patch.object(table, "send_changelog", wraps=table.send_changelog) as changelog, \
            patch.object(InteractionLearner, "apply_many", autospec=True, side_effect=InteractionLearner.apply_many) as apply_many:
        async with worker.app.agents["learn"].test_context() as agent:
            for k in range(3):
                await agent.put(key=b"ua", value=event(f"a{k}", user="ua", media=f"m{k}"), partition=0)
                await agent.put(key=b"ub", value=event(f"b{k}", user="ub", media=f"m{k + 3}"), partition=1)
            await eventually(lambda: version_of(worker, b"ua") == 3 and version_of(worker, b"ub") == 3)
        calls = [(call.args[0], call.args[1]) for call in changelog.call_args_list]
    assert apply_many.call_count == 1 and len(apply_many.call_args.args[2]) == 6
    assert sorted(calls) == [(0, b"ua"), (1, b"ub")]
    for user, offsets in ((b"ua", [0, 2, 4]), (b"ub", [1, 3, 5])):
        state = decode_user_state(table[user], worker.runtime.cfg)
        assert state.position == offsets[-1]  # the last event of the user, applied last
    worker.runtime.close()


def test_apply_many_steps_each_users_events_in_order_like_one_by_one(worker: Worker):
    """InteractionLearner.apply_many (the learn agent's batch): three users' interleaved events, a
    re-sent one among them, give the states that one-by-one steps give, to the bit."""
    runtime = worker.runtime
    events = [(Interaction.model_validate_json(event(f"e{k}", user=f"u{k % 3}", media=f"m{k % 6}")), 0, k) for k in range(9)]
    events.append((events[4][0], 0, 9))  # e4 re-sent at a new offset: a duplicate
    batched = {f"u{u}": runtime.initial_state(f"u{u}") for u in range(3)}
    results = runtime.interactions.apply_many(batched, events)
    one_by_one = {f"u{u}": runtime.initial_state(f"u{u}") for u in range(3)}
    for (interaction, partition, offset), result in zip(events, results):
        alone = runtime.interactions.apply(one_by_one[interaction.user_id], interaction, partition, offset)
        one_by_one[interaction.user_id] = alone.state
        assert result.applied == alone.applied
    assert [r.applied for r in results] == [True] * 9 + [False]
    for user, state in one_by_one.items():
        assert encode_user_state(batched[user], runtime.cfg) == encode_user_state(state, runtime.cfg)
    assert batched["u1"].version == 3 and batched["u1"].position == 7


async def test_invalid_interactions_are_dead_lettered_with_reasons(worker: Worker):
    with patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead:
        async with worker.app.agents["learn"].test_context() as agent:
            await agent.put(key=b"u1", value=b"\x00\x01")
            await agent.put(key=b"u1", value=b'{"event_id": 3}')
            await agent.put(key=b"someone-else", value=event("e3"))
            await agent.put(key=b"u1", value=event("e4"))  # valid, after the bad ones
            await eventually(lambda: version_of(worker, b"u1") == 1)
    assert [letter["reason"] for letter in sent(dead)] == ["invalid_json", "invalid_schema", "key_mismatch"]


async def test_event_for_unknown_media_waits_and_later_events_queue_behind_it(worker: Worker):
    with patch.object(worker.topics.wakeups, "send", new=AsyncMock()) as wake:
        async with worker.app.agents["learn"].test_context() as agent:
            await agent.put(key=b"u2", value=event("p1", user="u2", media="not-yet"))
            await agent.put(key=b"u2", value=event("p2", user="u2", media="m3"))  # ready, but must wait its turn
            await eventually(lambda: len(decode_pending(worker.tables.pending.get(b"u2"))) == 2)
    queue = decode_pending(worker.tables.pending[b"u2"])
    assert [json.loads(p.value)["event_id"] for p in queue] == ["p1", "p2"]
    assert all(p.produced_at is not None for p in queue)  # their latency will count the wait
    assert worker.tables.user_state.get(b"u2") is None
    assert {call.kwargs["key"] for call in wake.call_args_list} == {b"u2"}

    worker.runtime.catalogue.add([make_item("not-yet", seed=99, version=worker.runtime.feature_version)])
    async with worker.app.agents["wake"].test_context() as agent:
        await agent.put(key=b"u2", value=b'{"user_id": "u2"}')
        await eventually(lambda: version_of(worker, b"u2") == 2)
    assert worker.tables.pending.get(b"u2") is None
    state = decode_user_state(worker.tables.user_state[b"u2"], worker.runtime.cfg)
    assert state.version == 2 and state.position == queue[1].offset  # applied in order


async def test_pending_queue_is_bounded(tmp_path: Path):
    worker = make_worker(tmp_path, pending_limit=2)
    with patch.object(worker.topics.wakeups, "send", new=AsyncMock()), patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead:
        async with worker.app.agents["learn"].test_context() as agent:
            for k in range(3):
                await agent.put(key=b"u3", value=event(f"q{k}", user="u3", media="absent"))
            await eventually(lambda: dead.called)
    assert len(decode_pending(worker.tables.pending[b"u3"])) == 2
    assert [letter["reason"] for letter in sent(dead)] == ["pending_limit"]
    worker.runtime.close()


def test_worker_starts_users_and_items_from_a_trained_artifact(tmp_path: Path):
    probe = make_worker(tmp_path / "probe")
    cfg, version = probe.runtime.cfg, probe.runtime.feature_version
    probe.runtime.close()
    offsets = torch.randn(1, ParamLayout(cfg).size)
    trained = ModelArtifact(
        cfg=cfg, feature_version=version, shared=SharedParams.initial(cfg), item_ids=("m2",), item_bias=torch.tensor([1.5]),
        item_factors=torch.zeros(1, cfg.collab_dim), user_ids=("veteran",), user_offsets=offsets,
    )
    digest = save_artifact(trained, tmp_path / "model.safetensors")
    worker = make_worker(tmp_path / "w", model_path=tmp_path / "model.safetensors", model_sha256=digest[:16])
    assert worker.runtime.model_version == digest[:12]
    assert torch.equal(worker.runtime.initial_state("veteran").offsets, offsets[0])
    assert worker.runtime.initial_state("newcomer").offsets.abs().sum() == 0
    assert worker.runtime.catalogue.item_bias[worker.runtime.catalogue.rows(["m2"])].item() == 1.5
    worker.runtime.close()

    other = ModelArtifact(**{**trained.__dict__, "feature_version": FeatureVersion("other-backbone", "pca-x")})
    save_artifact(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="trained on features"):
        make_worker(tmp_path / "x", model_path=tmp_path / "other.safetensors")


def test_a_hybrid_worker_loads_item_factors_and_learns_the_user_factor(tmp_path: Path):
    """MMREC_COLLAB_DIM / MMREC_OBJECTIVE switch the worker to the hybrid extension: trained items get
    their factors in the catalogue (others 0), and a click moves the user's collaborative factor."""
    hybrid = {"collab_dim": 4, "objective": "pairwise"}
    probe = make_worker(tmp_path / "probe", **hybrid)
    cfg, version = probe.runtime.cfg, probe.runtime.feature_version
    probe.runtime.close()
    factors = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    trained = ModelArtifact(
        cfg=cfg, feature_version=version, shared=SharedParams.initial(cfg), item_ids=("m2", "m4"), item_bias=torch.zeros(2),
        item_factors=factors, user_ids=(), user_offsets=torch.zeros(0, ParamLayout(cfg).size),
    )
    save_artifact(trained, tmp_path / "model.safetensors")
    worker = make_worker(tmp_path / "w", model_path=tmp_path / "model.safetensors", **hybrid)
    runtime = worker.runtime
    assert torch.equal(runtime.catalogue.item_factors[runtime.catalogue.rows(["m2", "m4"])], factors)
    assert runtime.catalogue.item_factors[runtime.catalogue.rows(["m0", "m1", "m3", "m5"])].abs().sum() == 0
    click = Interaction.model_validate_json(event("e1", media="m2"))
    result = runtime.interactions.apply(runtime.initial_state("u1"), click)
    assert result.applied and result.state.offsets[ParamLayout(cfg).slices["collab"]].abs().sum() > 0
    worker.runtime.close()


def test_catalogue_sync_rejects_features_in_other_shapes_than_the_settings_give(worker: Worker):
    """A record of our feature version whose maps do not have the settings' shapes would make the
    catalogue refuse every later item: it is rejected (to the dead letters) and nothing is stored."""
    version = worker.runtime.feature_version
    good = make_item("fine", seed=7, version=version)
    bad = make_item("odd", seed=8, version=version, shapes=((8, 7, 7), (8, 7, 7), (8, 7, 7)))
    records = [
        ConsumerRecord("features", 0, i, 0, 0, item.media_id.encode(), encode_item(item), None, 0, 0, [])
        for i, item in enumerate([bad, good])
    ]
    ours, rejected = worker.catalogue._store(records)
    assert [item.media_id for item in ours] == ["fine"] and worker.catalogue._add(ours) == ["fine"]
    assert "odd" not in worker.runtime.catalogue
    assert [(r.key, reason) for r, reason, _ in rejected] == [(b"odd", "feature_shape")]


def test_rocksdb_tables_get_bounded_memory_settings(tmp_path: Path):
    """faust's defaults (3 x 64 MB memtables, a 2 GB cache per table partition) are replaced."""
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, table_store="rocksdb", partitions=1,
                        rocksdb_write_buffer_mb=2, rocksdb_block_cache_mb=3)
    built = create_worker(settings, Metrics(CollectorRegistry()), web_enabled=False)
    try:
        for table in (built.tables.user_state, built.tables.pending):
            options = table.data.rocksdb_options
            assert (options.write_buffer_size, options.max_write_buffer_number, options.block_cache_size) == (2 << 20, 2, 3 << 20)
    finally:
        built.runtime.close()
