"""Liveness and readiness on the worker's web port (faust's web server, beside /metrics).

- `GET /health/live`: 200 while the event loop answers (a blocked loop cannot serve it, so the
  probe times out) and the app has not crashed; 503 once it has.
- `GET /health/ready`: 200 only when every check of the worker's role passes, else 503; both reply
  with the checks as JSON. The checks:
  - `recovered`: the consumer has been assigned its partitions at least once, tables are recovered
    from their changelogs and no rebalance is under way (faust's recovery `completed` event, not
    `app.rebalancing`, not `app.in_recovery`);
  - `model_loaded`: the model the role serves with is in memory. Every role builds its Runtime
    (shared parameters, projection, feature version, the local catalogue) before the app starts;
    the extracting roles (extract, all) also load the CNN eagerly at start, on the extraction
    thread, and are not ready before it is loaded;
  - `catalogue_caught_up` (learn, score, all): the catalogue sync has read the features topic up to
    the end offsets it saw at start at least once, so scores and negatives use the whole catalogue.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import faust
from faust import web

from worker.catalogue_sync import CatalogueSync
from worker.metrics import Metrics

EXTRACTING = ("extract", "all")
SCORING = ("learn", "score", "all")  # roles that need the catalogue

_LAG_PERIOD_S = 0.25


@dataclass
class Health:
    app: faust.App
    role: str
    metrics: Metrics
    catalogue: CatalogueSync | None = None
    cnn_loaded: bool = False  # set by the extracting roles once the CNN is in memory
    loop_lag_s: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def checks(self) -> dict[str, bool]:
        app = self.app
        recovery = app.tables.recovery
        checks = {
            "recovered": recovery.completed.is_set() and not app.rebalancing and not app.in_recovery,
            "model_loaded": self.cnn_loaded or self.role not in EXTRACTING,
        }
        if self.role in SCORING:
            checks["catalogue_caught_up"] = self.catalogue is not None and self.catalogue.caught_up
        return checks

    def ready(self) -> tuple[bool, dict[str, object]]:
        checks = self.checks()
        ok = all(checks.values())
        self.metrics.ready.set(1 if ok else 0)
        return ok, {"status": "ready" if ok else "not ready", "role": self.role, "checks": checks}

    def live(self) -> tuple[bool, dict[str, object]]:
        crashed_event = getattr(self.app, "_crashed", None)  # mode.Service's, set when a task or agent crashed the app
        crashed = crashed_event is not None and crashed_event.is_set()
        return not crashed, {
            "status": "crashed" if crashed else "alive",
            "role": self.role,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "loop_lag_s": round(self.loop_lag_s, 4),
        }

    async def watch_loop(self) -> None:
        """Forever: measure how late the event loop wakes from a short sleep (mmrec_event_loop_lag_seconds)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(_LAG_PERIOD_S)
            self.loop_lag_s = max(0.0, loop.time() - before - _LAG_PERIOD_S)
            self.metrics.loop_lag.observe(self.loop_lag_s)

    def attach(self) -> None:
        """Registers the two pages on the app's web server and the loop watch as an app task."""
        health = self

        @self.app.page("/health/live")
        async def live(view: web.View, request: web.Request) -> web.Response:
            ok, body = health.live()
            return view.json(body, status=200 if ok else 503)

        @self.app.page("/health/ready")
        async def ready(view: web.View, request: web.Request) -> web.Response:
            ok, body = health.ready()
            return view.json(body, status=200 if ok else 503)

        self.app.task(self.watch_loop)
