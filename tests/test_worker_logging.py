"""The worker's logging setup: a quiet log level keeps debug records of its libraries off."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import faust
import pytest

from worker.main import faust_worker


@pytest.fixture
def restored_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("level", ["warning", "error", "info"])
def test_library_debug_records_stay_off_at_levels_above_debug(level: str, restored_root_logger: None) -> None:
    process = faust_worker(faust.App("logging-test", broker="kafka://127.0.0.1:1"), level)
    process._setup_logging()  # what execute_from_commandline does first
    assert logging.getLogger().getEffectiveLevel() == logging.getLevelName(level.upper())
    for name in ("aiokafka.consumer.fetcher", "faust.transport", "mode"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name
