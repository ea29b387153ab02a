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

Third fix: a stream partition with no committed offset yet is sought to its first offset. aiokafka's
seek_to_committed skips such a partition, so the seek above left it wherever the fetcher stood: past
the records of a fetch that faust discarded because the flow was stopped ("getmany called while flow
not active"). Measured: a worker SIGKILLed before its first commit restarted at offsets 719-1,105 of
its four partitions, and once it had stepped later events the earlier ones counted as already
applied (the user state's offset rule): ~3,000 events lost (tests/test_crash_safety.py, SIGKILL
scenario beside a busy core, 2 of 12 runs once commits waited for delivery and so came later).
"""
from __future__ import annotations

import asyncio

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

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
            await self._seek_to_committed(assignment)
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
            await self._seek_to_committed(assignment)
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


    async def _seek_to_committed(self, assignment: set[TP]) -> None:
        """Every stream partition to its committed offset; one without (nothing committed yet) to its
        first offset, which the reset policy (earliest) promises: aiokafka's seek_to_committed leaves
        such a partition where the fetcher stands, past records it may have fetched and faust dropped
        (measured: a worker SIGKILLed before its first commit restarted at offset 1,096, and the
        events before it counted as already applied once later ones were: lost)."""
        consumer = self.app.consumer
        if self.app.conf.consumer_auto_offset_reset != "earliest":  # pragma: no cover - worker/app.py sets it
            raise RuntimeError("SeekFirstRecovery expects consumer_auto_offset_reset='earliest'")
        self.log.info("Seek stream partitions to committed offsets.")
        timeout = self.app.conf.broker_request_timeout
        await self._wait(consumer.perform_seek(), timeout=timeout)
        stream = sorted(tp for tp in assignment if not self._is_changelog_tp(tp))
        uncommitted = [tp for tp in stream if not consumer._read_offset.get(tp)]  # None: nothing committed (0 is not sought either)
        if uncommitted:
            earliest = await asyncio.wait_for(consumer.earliest_offsets(*uncommitted), timeout=timeout)
            await self._wait(consumer.seek_wait({tp: earliest[tp] for tp in uncommitted}), timeout=timeout)
        where = ", ".join(f"{tp.topic}/{tp.partition}: {consumer._read_offset.get(tp) or 0}" for tp in stream)
        self.log.info(f"Stream partitions resume at: {where}")


class SeekFirstTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
