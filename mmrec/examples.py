"""Turn one interaction into the examples of one online step."""
from __future__ import annotations

import torch

from mmrec.catalogue import Catalogue
from mmrec.feedback import Feedback, FeedbackWeights, is_positive
from mmrec.online import Examples
from mmrec.user_state import id_hash


def event_examples(
    catalogue: Catalogue,
    media_id: str,
    feedback: Feedback,
    event_id: str,
    negatives: int,
    weights: FeedbackWeights,
) -> Examples:
    """The event's item with its label and weight, plus, for a positive event, `negatives` other
    catalogue items sampled uniformly as label-0 examples.

    The sample is seeded by the event id, so a replay of the same events takes the same steps.
    Raises KeyError if the media is not in the catalogue.
    """
    row = int(catalogue.rows([media_id])[0])
    rows = [row]
    if is_positive(feedback) and negatives > 0 and len(catalogue) > 1:
        gen = torch.Generator().manual_seed(id_hash(event_id) & (2**63 - 1))
        drawn = torch.randint(0, len(catalogue) - 1, (negatives,), generator=gen)
        rows += (drawn + (drawn >= row).long()).tolist()  # uniform over every row but the event's own
    index = torch.tensor(rows, dtype=torch.long)
    labels = torch.zeros(len(rows))
    labels[0] = feedback.label
    example_weights = torch.full((len(rows),), weights.sampled_negative)
    example_weights[0] = feedback.weight
    return Examples(
        maps=catalogue.float_maps(index),
        item_bias=catalogue.item_bias[index],
        labels=labels,
        weights=example_weights,
    )
