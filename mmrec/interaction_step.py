"""One interaction event applied to one user's state: the single code path of the worker, the
prequential evaluation and the offline replay (so a replay of the same events in the same order
gives bit-identical states, also when the worker takes the events in batches: `apply_many`)."""
from __future__ import annotations

from collections.abc import Sequence

from mmrec.catalogue import Catalogue
from mmrec.examples import NegativeSampler, event_examples
from mmrec.feedback import EventKind, Feedback, FeedbackWeights
from mmrec.messages import Interaction
from mmrec.online import OnlineLearner, StepRequest, StepResult
from mmrec.user_state import UserState


class InteractionLearner:
    """Applies Interaction messages to UserStates with the online step."""

    def __init__(self, learner: OnlineLearner, catalogue: Catalogue, weights: FeedbackWeights, negatives: int) -> None:
        self.learner = learner
        self.catalogue = catalogue
        self.sampler = NegativeSampler(catalogue)
        self.weights = weights
        self.negatives = negatives

    def ready(self, interaction: Interaction) -> bool:
        """True when the event's media has features in the catalogue."""
        return interaction.media_id in self.catalogue

    def apply(self, state: UserState, interaction: Interaction, partition: int = -1, offset: int = -1) -> StepResult:
        """One online step (or a no-op for an already applied event). Raises KeyError if not ready."""
        return self.apply_many({interaction.user_id: state}, [(interaction, partition, offset)])[0]

    def apply_many(self, states: dict[str, UserState], events: Sequence[tuple[Interaction, int, int]]) -> list[StepResult]:
        """`apply` to (interaction, partition, offset) events in order, each on its user's latest state
        in `states` (user id -> state, updated in place). The first events of every user are stepped
        as one batch, then their second ones, and so on; each result equals `apply`'s, bit for bit in float32."""
        results: list[StepResult | None] = [None] * len(events)
        waiting = list(range(len(events)))
        while waiting:
            wave: list[int] = []
            later: list[int] = []
            users: set[str] = set()
            for k in waiting:
                user = events[k][0].user_id
                (later if user in users else wave).append(k)
                users.add(user)
            fresh = []
            for k in wave:
                interaction, partition, offset = events[k]
                state = states[interaction.user_id]
                if state.has_applied(interaction.event_id, partition, offset):
                    results[k] = StepResult(state=state, loss=float("nan"), applied=False)
                else:
                    fresh.append(k)
            requests = [self._request(states[events[k][0].user_id], *events[k]) for k in fresh]
            for k, result in zip(fresh, self.learner.step_many(requests)):
                results[k] = result
                states[events[k][0].user_id] = result.state
            waiting = later
        return results  # type: ignore[return-value]  # every slot is filled above

    def _request(self, state: UserState, interaction: Interaction, partition: int, offset: int) -> StepRequest:
        base = self.weights.feedback(interaction.kind, interaction.watch_fraction)
        feedback = Feedback(label=base.label, weight=base.weight * interaction.weight)
        examples = event_examples(
            self.catalogue, self.sampler, interaction.media_id, feedback, interaction.event_id, self.negatives, self.weights
        )
        engaged = interaction.media_id if interaction.kind is not EventKind.IMPRESSION else None
        return StepRequest(state, examples, interaction.event_id, partition, offset, interaction.timestamp.timestamp(), engaged)
