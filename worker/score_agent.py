"""The score role's agent: reads the learn role's user updates (co-partitioned with the interactions,
keyed by user) and hands each user's new state to the Refresher, which publishes their top-K."""
from __future__ import annotations

import faust

from mmrec.user_state import CorruptUserState, decode_user_state
from worker.app import Topics
from worker.dead_letters import DeadLetters
from worker.refresh import Refresher
from worker.runtime import Runtime
from worker.user_updates import CorruptUserUpdate, decode_user_update


def attach_scoring(app: faust.App, topics: Topics, runtime: Runtime, dead: DeadLetters, refresher: Refresher) -> None:
    @app.agent(topics.user_updates, name="score")
    async def score(stream: faust.StreamT) -> None:
        async for event in stream.events():
            message = event.message
            runtime.metrics.consumed.labels(message.topic).inc()
            try:
                if not event.key:
                    raise CorruptUserUpdate("no key (the user id)")
                user_id = event.key.decode()
                update = decode_user_update(event.value or b"")
                state = decode_user_state(update.state, runtime.cfg)
            except (CorruptUserUpdate, CorruptUserState, UnicodeDecodeError) as exc:
                await dead.reject(message, "corrupt_user_update", str(exc))
                continue
            refresher.note(user_id, state, message.partition, update.trigger, update.produced_at, update.applied)
