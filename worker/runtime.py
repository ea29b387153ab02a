"""The mmrec objects one worker process shares between its agents, and the threads they run on.

The online steps and every write to the catalogue run on the event loop's thread, so they never
race (the catalogue is not thread-safe for writers). They used to run on a thread of their own, and
that cost more than it saved: torch releases the GIL around every op, and a step's ~60 small ops
each waited to get it back from the busy event loop (measured here: a step took 0.59 ms alone and
3.2 ms beside a thread running Python, 5x). A batch of steps blocks the loop for tens of ms at most.
Scoring runs there too (worker/refresh.py, for the same reason). The feature store's SQLite writes
run on a store thread, and the CNN on its own extraction thread (it owns the CUDA context when there
is one).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from mmrec.artifact import ModelArtifact, load_artifact
from mmrec.catalogue import Catalogue
from mmrec.extraction import FeatureExtractor, feature_version
from mmrec.feature_store import open_feature_store
from mmrec.feedback import FeedbackWeights
from mmrec.interaction_step import InteractionLearner
from mmrec.model import SharedParams
from mmrec.user_state import UserState
from mmrec.online import OnlineLearner
from mmrec.recommend import Recommender
from mmrec.settings import Settings
from worker.metrics import Metrics

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)  # more threads than cores slows torch ~10x under load
        self.cfg = settings.scorer_config()
        self.feature_version = feature_version(settings)
        self.artifact = self._load_artifact()
        self.shared = self.artifact.shared if self.artifact else SharedParams.initial(self.cfg)
        self.model_version = self.artifact.version if self.artifact else "untrained-prior"
        self._trained_users = {user: row for row, user in enumerate(self.artifact.user_ids)} if self.artifact else {}
        self.store = open_feature_store(settings)
        self.catalogue = Catalogue.load(self.store, self.feature_version, factor_dim=self.cfg.collab_dim)
        self.apply_item_bias(self.catalogue.ids)
        self.interactions = InteractionLearner(
            OnlineLearner(self.cfg, self.shared, settings.online_config()), self.catalogue, FeedbackWeights(), settings.negatives
        )
        self.recommender = Recommender(self.cfg, self.shared, settings.retrieval_config())
        self.store_thread = ThreadPoolExecutor(1, thread_name_prefix="mmrec-store")
        self.extract_thread = ThreadPoolExecutor(1, thread_name_prefix="mmrec-extract")
        self._extractor: FeatureExtractor | None = None
        metrics.items.set(len(self.catalogue))
        metrics.model_info.labels(self.model_version, str(self.feature_version)).set(1)

    def _load_artifact(self) -> ModelArtifact | None:
        if self.settings.model_path is None:
            return None
        artifact = load_artifact(self.settings.model_path, self.settings.model_sha256)
        if artifact.cfg != self.cfg:
            raise ValueError(f"model {artifact.version} has config {artifact.cfg}, the settings say {self.cfg}")
        if artifact.feature_version != self.feature_version:
            raise ValueError(f"model {artifact.version} was trained on features {artifact.feature_version}, this worker makes {self.feature_version}")
        return artifact

    def initial_state(self, user_id: str) -> UserState:
        """A user's state before their first event here: their trained offsets, or the prior."""
        state = UserState.new(self.cfg)
        row = self._trained_users.get(user_id)
        if row is not None:
            assert self.artifact is not None
            state.offsets = self.artifact.user_offsets[row].clone()
        return state

    def apply_item_bias(self, media_ids: Sequence[str]) -> None:
        """Give catalogue items their trained bias residual and factors (items the model never saw keep 0)."""
        if self.artifact is not None:
            self.artifact.apply_items(self.catalogue, media_ids)

    async def on_store_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.store_thread, fn, *args)

    async def on_extract_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.extract_thread, fn, *args)

    def extractor(self) -> FeatureExtractor:
        """The CNN, loaded on first use (call from the extraction thread)."""
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.settings)
        return self._extractor

    def close(self) -> None:
        self.store_thread.shutdown(wait=True)
        self.extract_thread.shutdown(wait=True)
        self.store.close()
