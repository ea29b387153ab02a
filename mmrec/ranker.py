"""Our model as an evaluation Ranker: `mmrec train`'s fit offline, the worker's online step in the
prequential replay (the same InteractionLearner code path as the streaming worker).

Registered specs: `mmrec`, the faithful patent model; `mmrec-hybrid`, the hybrid extension at its
registered point (12 channels per layer, collaborative factors, the pairwise objective, the item
memory fitted first, modality dropout; docs/design.md); and that point at other channel counts,
`mmrec-hybrid-d8`, `-d12` and `-d16`, the configurations of the confirmatory study's rounds
(docs/visual-taste.md), so that their commands reproduce.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import torch
from torch import Tensor

from mmrec.evaluation.data import EvaluationData
from mmrec.evaluation.protocol import RankerSpec, grid
from mmrec.feedback import FeedbackWeights
from mmrec.interaction_log import Event, InteractionLog
from mmrec.interaction_step import InteractionLearner
from mmrec.messages import Interaction
from mmrec.model import ModelConfig, score
from mmrec.online import OnlineLearner
from mmrec.training import PatentModel, TrainConfig, fit
from mmrec.user_state import UserState


class PatentRanker:
    def __init__(self, data: EvaluationData, cfg: ModelConfig, train: TrainConfig, negatives: int) -> None:
        self.data = data
        self.cfg = cfg
        self.train_config = train
        self.negatives = negatives
        self.catalogue = data.catalogue(cfg.channels)
        self.model = PatentModel(cfg, data.log.num_users, data.log.num_items)
        self.states: dict[int, UserState] = {}
        self.learner: InteractionLearner | None = None
        self.events_learned = 0

    def fit(self, train: InteractionLog, validation: InteractionLog | None) -> None:
        self.model = PatentModel(self.cfg, self.data.log.num_users, self.data.log.num_items)
        fit(self.model, train, self.catalogue, self.train_config)
        self.catalogue.item_bias[:] = self.model.item_bias.detach()
        self.catalogue.set_factor_dim(self.cfg.collab_dim)
        self.catalogue.item_factors[:] = self.model.item_factors.detach()
        online = self.data.settings.online_config()
        self.learner = InteractionLearner(OnlineLearner(self.cfg, self.model.shared(), online), self.catalogue, FeedbackWeights(), self.negatives)
        self.states = {}

    def scores(self, users: Tensor, items: Tensor) -> Tensor:
        result = self.model.scores(users, items, self.catalogue)
        for row, user in enumerate(users.tolist()):
            if user in self.states:  # learned online since the fit (prequential replay)
                result[row] = self._scores_from(self.states[user].offsets, items)
        return result

    def learn(self, event: Event) -> None:
        if self.learner is None:
            raise RuntimeError("learn() before fit()")
        state = self.states.get(event.user)
        if state is None:
            offsets = self.model.users(torch.tensor([event.user]))[0].detach()
            state = UserState(offsets=offsets, accum=torch.zeros_like(offsets))
        self.events_learned += 1
        interaction = Interaction(
            event_id=f"replay-{self.events_learned}",
            user_id=self.data.log.user_ids[event.user],
            media_id=self.data.log.item_ids[event.item],
            kind=event.kind,
            timestamp=datetime.fromtimestamp(event.time, timezone.utc),
            watch_fraction=event.label if event.kind.value == "play" else None,
            weight=event.weight,
        )
        self.states[event.user] = self.learner.apply(state, interaction).state

    @torch.no_grad()
    def _scores_from(self, offsets: Tensor, items: Tensor) -> Tensor:
        """(I,) scores of one user's online state."""
        params = self.model.layout.split(self.model.prior.detach() + offsets[None])
        model = self.model
        return score(params, self.catalogue.float_maps(items), model.item_bias.detach()[items], model.shared(), self.cfg, model.item_factors.detach()[items])[0]


def build(data: EvaluationData, params: Mapping[str, Any]) -> PatentRanker:
    """A ranker for one grid point: TrainConfig fields, and model fields that override the settings
    (readout, channels, collab_dim, objective)."""
    settings = data.settings
    cfg = ModelConfig(
        n_layers=settings.n_layers,
        kernel_size=settings.kernel_size,
        channels=params.get("channels", settings.channels),
        pool=settings.pool,
        readout=params.get("readout", settings.readout),
        collab_dim=params.get("collab_dim", settings.collab_dim),
        objective=params.get("objective", settings.objective),
    )
    train = TrainConfig(**{k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__}, seed=data.seed)
    return PatentRanker(data, cfg, train, negatives=settings.negatives)


SPEC = RankerSpec(
    name="mmrec",
    build=build,
    grid=grid(user_l2=(1e-4, 1e-3), learning_rate=(0.01,)),
    requires=frozenset({"media"}),
    description="the patent model (claims 1-9): per-user interest and attention kernels over CNN feature maps",
)

HYBRID_SPEC = RankerSpec(
    name="mmrec-hybrid",
    build=build,
    grid=grid(
        channels=(12,),  # since the confirmatory study's third round (docs/visual-taste.md); 8 before
        collab_dim=(64,),
        objective=("pairwise",),
        negatives=(32,),
        user_l2=(1e-2,),
        collab_l2=(1e-2,),
        learning_rate=(0.01,),
        memory_epochs=(8,),
        modality_dropout=(0.25,),
    ),
    requires=frozenset({"media"}),
    description="the hybrid extension: the patent model + collaborative factors, pairwise objective, item memory fitted first, modality dropout (docs/design.md)",
)

def _hybrid_at(channels: int) -> RankerSpec:
    """The registered hybrid point at another channel count, nothing else changed: more channels see
    new items better, at some cost on known ones (docs/visual-taste.md, "Confirmatory study")."""
    return dataclasses.replace(
        HYBRID_SPEC,
        name=f"mmrec-hybrid-d{channels}",
        grid=tuple({**point, "channels": channels} for point in HYBRID_SPEC.grid),
        description=f"the hybrid extension at {channels} channels per layer (docs/visual-taste.md, confirmatory study)",
    )


HYBRID_D8_SPEC = _hybrid_at(8)  # the registered point until the third round: instance 0 and the first round
HYBRID_D12_SPEC = _hybrid_at(12)  # the third round's name for what is now the registered point
HYBRID_D16_SPEC = _hybrid_at(16)  # the second round
