"""Shared fixtures. Keep each group under its own heading; add new groups below.

Broker: one embedded Tansu broker for the whole session (memory storage, 127.0.0.1, free port),
stopped by PID at the end. Tests isolate themselves by topic and group names, never by restarting it.
"""
from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from worker.embedded_broker import EmbeddedBroker

# --- data sets ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fashion_mnist() -> None:
    """Fails (never skips) where Fashion-MNIST is missing: `make test` installs it."""
    from mmrec.datasets.fashion_mnist import DEFAULT_DIR

    assert DEFAULT_DIR.is_dir(), f"Fashion-MNIST is not in {DEFAULT_DIR}: run `make fashion-mnist` (Debian dataset-fashion-mnist)"


# --- broker -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """The suite's embedded broker; its log is in pytest's basetemp (kept for the last 3 runs)."""
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log_path) as b:
        yield b


@pytest.fixture(scope="session")
def group_timings() -> dict[str, int]:
    """AIOKafkaConsumer kwargs that keep group joins short on Tansu (a join round lasts
    max(1 s, session_timeout / 2))."""
    return {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`unique_name("events")` -> "<test-name>-<8 hex>-events": topic and group names that no other
    test (or rerun of this one) shares on the session broker."""
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:60]
    run = uuid.uuid4().hex[:8]

    def make(suffix: str = "t") -> str:
        return f"{test}-{run}-{suffix}"

    return make
