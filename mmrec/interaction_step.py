"""One interaction event applied to one user's state: the single code path of the worker, the
prequential evaluation and the offline replay (so a replay of the same events in the same order
gives bit-identical states)."""
from __future__ import annotations

from mmrec.catalogue import Catalogue
from mmrec.examples import NegativeSampler, event_examples
from mmrec.feedback import EventKind, Feedback, FeedbackWeights
from mmrec.messages import Interaction
from mmrec.online import OnlineLearner, StepResult
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
        if state.has_applied(interaction.event_id, partition, offset):
            return StepResult(state=state, loss=float("nan"), applied=False)
        base = self.weights.feedback(interaction.kind, interaction.watch_fraction)
        feedback = Feedback(label=base.label, weight=base.weight * interaction.weight)
        examples = event_examples(
            self.catalogue, self.sampler, interaction.media_id, feedback, interaction.event_id, self.negatives, self.weights
        )
        engaged = interaction.media_id if interaction.kind is not EventKind.IMPRESSION else None
        return self.learner.step(
            state,
            examples,
            interaction.event_id,
            partition=partition,
            position=offset,
            now=interaction.timestamp.timestamp(),
            engaged_media=engaged,
        )
