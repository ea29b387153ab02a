"""The mmrec objects one worker process shares between its agents, and the threads they run on.

Everything that touches the catalogue (online steps, scoring, adding items) runs on one model thread,
in submission order: the catalogue is not thread-safe, and the event loop must never block on torch.
The CNN runs on its own extraction thread (it owns the CUDA context when there is one).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from mmrec.catalogue import Catalogue
from mmrec.extraction import FeatureExtractor, feature_version
from mmrec.feature_store import open_feature_store
from mmrec.feedback import FeedbackWeights
from mmrec.interaction_step import InteractionLearner
from mmrec.model import SharedParams
from mmrec.online import OnlineLearner
from mmrec.recommend import Recommender
from mmrec.settings import Settings
from worker.metrics import Metrics

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.cfg = settings.scorer_config()
        self.feature_version = feature_version(settings)
        self.shared = SharedParams.initial(self.cfg)
        self.model_version = "untrained-prior"
        self.store = open_feature_store(settings)
        self.catalogue = Catalogue.load(self.store, self.feature_version)
        self.interactions = InteractionLearner(
            OnlineLearner(self.cfg, self.shared, settings.online_config()), self.catalogue, FeedbackWeights(), settings.negatives
        )
        self.recommender = Recommender(self.cfg, self.shared)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="mmrec-model")
        self.extract_thread = ThreadPoolExecutor(1, thread_name_prefix="mmrec-extract")
        self._extractor: FeatureExtractor | None = None
        metrics.items.set(len(self.catalogue))
        metrics.model_info.labels(self.model_version, str(self.feature_version)).set(1)

    async def on_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def on_extract_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.extract_thread, fn, *args)

    def extractor(self) -> FeatureExtractor:
        """The CNN, loaded on first use (call from the extraction thread)."""
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.settings)
        return self._extractor

    def close(self) -> None:
        self.model_thread.shutdown(wait=True)
        self.extract_thread.shutdown(wait=True)
        self.store.close()
