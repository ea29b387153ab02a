"""Fast checks without a broker: readiness rules per role, the user-update record, role wiring."""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from mmrec.messages import Trigger
from mmrec.model import ModelConfig
from mmrec.settings import Settings
from mmrec.user_state import UserState, decode_user_state, encode_user_state
from worker.health import Health
from worker.metrics import Metrics
from worker.service import app_id, create_worker
from worker.user_updates import CorruptUserUpdate, UserUpdate, decode_user_update, encode_user_update


def fake_app(completed: bool = True, rebalancing: bool = False, in_recovery: bool = False) -> SimpleNamespace:
    event = asyncio.Event()
    if completed:
        event.set()
    return SimpleNamespace(tables=SimpleNamespace(recovery=SimpleNamespace(completed=event)), rebalancing=rebalancing, in_recovery=in_recovery)


@pytest.mark.parametrize(
    "role, app, cnn, caught_up, ready",
    [
        ("all", fake_app(), True, True, True),
        ("all", fake_app(completed=False), True, True, False),  # never assigned / recovered yet
        ("all", fake_app(rebalancing=True), True, True, False),
        ("learn", fake_app(in_recovery=True), False, True, False),
        ("learn", fake_app(), False, True, True),  # learn needs no CNN
        ("score", fake_app(), False, False, False),  # catalogue not read up to its end yet
        ("extract", fake_app(), False, False, False),  # CNN not loaded yet
        ("extract", fake_app(), True, False, True),  # extract needs no catalogue
    ],
)
def test_readiness_per_role(role: str, app: SimpleNamespace, cnn: bool, caught_up: bool, ready: bool):
    metrics = Metrics(CollectorRegistry())
    health = Health(app, role, metrics, catalogue=SimpleNamespace(caught_up=caught_up), cnn_loaded=cnn)  # type: ignore[arg-type]
    ok, body = health.ready()
    assert ok is ready and body["status"] == ("ready" if ready else "not ready")
    assert ("catalogue_caught_up" in body["checks"]) is (role != "extract")
    assert metrics.ready._value.get() == (1 if ready else 0)


def test_liveness_fails_once_the_app_crashed():
    app = fake_app()
    app._crashed = asyncio.Event()
    health = Health(app, "all", Metrics(CollectorRegistry()))  # type: ignore[arg-type]
    assert health.live()[0]
    app._crashed.set()
    ok, body = health.live()
    assert not ok and body["status"] == "crashed"


def test_user_update_round_trip_and_strict_decoding():
    cfg = ModelConfig()
    state = encode_user_state(UserState.new(cfg), cfg)
    for update in (
        UserUpdate(Trigger(kind="interaction", event_id="ev-1"), 1_764_064_800.25, True, state),
        UserUpdate(Trigger(kind="interaction", event_id="ev-2"), None, False, state),
    ):
        back = decode_user_update(encode_user_update(update))
        assert back == update and decode_user_state(back.state, cfg).version == 0
    good = encode_user_update(UserUpdate(Trigger(kind="interaction", event_id="e"), 1.0, True, state))
    for bad in (b"", b"MMU1", b"XXXX" + good[4:], good[:4] + b"\xff" + good[5:], good[: len(good) - len(state)], good.replace(b'"e"', b'"\x01"')):
        with pytest.raises(CorruptUserUpdate):
            decode_user_update(bad)


@pytest.mark.parametrize("role, group, agents, tables", [
    ("all", "g", {"extract", "learn", "wake"}, True),
    ("extract", "g-extract", {"extract"}, False),
    ("learn", "g", {"learn", "wake"}, True),
    ("score", "g-score", {"score"}, False),
])
def test_each_role_wires_its_own_agents_group_and_tables(tmp_path: Path, role: str, group: str, agents: set[str], tables: bool):
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, table_store="memory", group_id="g", role=role)
    assert app_id(settings) == group
    worker = create_worker(settings, web_enabled=False)
    try:
        assert worker.app.conf.id == group
        assert set(worker.app.agents) == agents
        assert (worker.tables is not None) is tables
        assert set(worker.app.tables) == ({"user_state", "pending"} if tables else set())
    finally:
        worker.runtime.close()


def test_two_workers_in_one_process_have_separate_registries(tmp_path: Path):
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, table_store="memory")
    first, second = (create_worker(settings) for _ in range(2))  # web on: faust's sensor registers too
    try:
        assert first.metrics.registry is not second.metrics.registry
        names = {m.name for m in first.metrics.registry.collect()}
        assert {"faust_messages_received", "mmrec_messages_consumed", "mmrec_users_held", "process_resident_memory_bytes"} <= names
    finally:
        first.runtime.close()
        second.runtime.close()


def test_users_held_counts_the_memory_store_exactly_and_asks_rocksdb_for_its_estimate():
    from worker.service import users_held

    assert users_held(SimpleNamespace(data={b"u1": b"s", b"u2": b"s"})) == 2  # type: ignore[arg-type]

    class Db:
        def __init__(self, n: int) -> None:
            self.n = n

        def property_int_value(self, name: str) -> int:
            assert name == "rocksdb.estimate-num-keys"
            return self.n

    rocks = SimpleNamespace(_dbs_for_actives=lambda: iter([Db(3), Db(4)]))
    assert users_held(SimpleNamespace(data=rocks)) == 7  # type: ignore[arg-type]
