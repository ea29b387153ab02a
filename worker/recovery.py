"""faust 0.15.3 fix: seek stream partitions to their committed offsets BEFORE resuming them.

faust's Recovery.on_recovery_completed (faust/tables/recovery.py, 0.15.3) resumes the stream
partitions and only then seeks them to the committed offsets, while the flow is already running, so
agents can be handed records from a position the seek then moves away from: measured on our broker,
events were skipped after a SIGKILL restart, once for good. This copy of the method swaps the two
steps; with it 6 of 6 double-kill runs were clean. Installed through the App's TableManager setting.
`_resume_streams`, the path of an app without tables (the extract and score roles), had the same
order and gets the same swap (by reading; its crash runs were not measured separately).

Second fix: the flow is stopped for the whole of on_recovery_completed. When the changelogs are read,
the base class pauses them, and every stream partition is still paused (faust's own bookkeeping;
aiokafka keeps fetching them). The set of active partitions that faust hands to aiokafka is then
empty, and aiokafka reads an empty set as "every partition": a fetch still waiting from the recovery
returns the stream partitions' records, aiokafka moves their positions past them, and faust's
getmany drops them silently because those partitions are not active. A partition sought to its
committed offset before that moment then resumes after the dropped records, faust counts the hole
as a gap (acked) and commits past it: measured, hundreds of events per partition never reached the
agents after a SIGTERM restart (tests/test_crash_safety.py, sigterm scenario, 3 of 5 runs). With the
flow stopped, faust's getmany seeks back to the committed offsets instead of dropping records, and
a drop before the flow stopped is undone by the seek below. `_resume_streams` gets the same line
(by reading: with no tables the window opens when a rebalance pauses the new assignment).
"""
from __future__ import annotations

import asyncio

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery

if faust.__version__ != "0.15.3":  # pragma: no cover - guards an upgrade
    raise ImportError(f"worker/recovery.py patches faust 0.15.3; re-check it against faust {faust.__version__}")


class SeekFirstRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        consumer.stop_flow()  # until the seek below is done (see the module doc); resume_flow() at the end
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table]))
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(f"Recovery rebalancing again app id {self.app.consumer_generation_id} param {generation_id}")
            return
        if assignment:  # the fix: seek first ...
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})  # ... then resume
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


    async def _resume_streams(self, generation_id: int = 0) -> None:
        """The path taken when the app has no tables (the extract and score roles): the same fix."""
        app = self.app
        consumer = app.consumer
        consumer.stop_flow()  # the same window (every partition paused) as above; resume_flow() at the end
        await app.on_rebalance_complete.send()
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if assignment:  # seek first ...
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            consumer.resume_partitions({tp for tp in assignment if not self._is_changelog_tp(tp)})  # ... then resume
        else:
            self.log.info("Resuming streams with empty assignment")
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")


class SeekFirstTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
