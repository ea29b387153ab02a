"""What rankers are built from: the interaction log, the items' media (features extracted on demand
and cached), and, on the visual-taste benchmark, the true item attributes and simulation parameters."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mmrec.catalogue import Catalogue
from mmrec.datasets.visual_taste import Simulation, true_attributes
from mmrec.evaluation.features import Extract, PenultimateExtractor, cached_features
from mmrec.evaluation.protocol import Requirement
from mmrec.extraction import FeatureExtractor
from mmrec.feature_store import SqliteFeatureStore
from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.interaction_log import InteractionLog, MediaIndex, read_interactions
from mmrec.projection import Projection
from mmrec.projection_fit import fit_projection, mirrored
from mmrec.settings import Settings

PooledKind = Literal["maps", "penultimate"]
INTERACTION_FILES = ("interactions.csv", "interactions.parquet")


@dataclass(eq=False)
class EvaluationData:
    """One data set under evaluation. Item rows everywhere follow log.item_ids.

    attributes (I, A) float32  true item attributes (benchmark only)
    truth                      the simulation (benchmark only)
    """

    name: str
    log: InteractionLog
    settings: Settings
    cache_dir: Path  # feature stores of this data set
    seed: int = 0
    media: MediaIndex | None = None
    attributes: Tensor | None = None
    truth: Simulation | None = None
    projection: Projection | None = None  # fitted by fit_own_projection; None: the settings' one
    _extractors: dict[int, FeatureExtractor] = field(default_factory=dict, repr=False)
    _catalogues: dict[int, Catalogue] = field(default_factory=dict, repr=False)
    _pooled: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_folder(cls, folder: Path, settings: Settings, cache_root: Path, seed: int = 0) -> EvaluationData:
        """A folder with interactions.csv (or .parquet) and media/; a visual-taste benchmark folder
        also gives items.csv (true attributes) and ground_truth.npz (the simulation)."""
        found = [folder / f for f in INTERACTION_FILES if (folder / f).is_file()]
        if not found:
            raise FileNotFoundError(f"{folder} has none of {', '.join(INTERACTION_FILES)}")
        data = cls.from_files(found[0], folder / "media", settings, cache_root, seed)
        if (folder / "ground_truth.npz").is_file():
            ids, _, matrix = true_attributes(folder)
            row = {media_id: r for r, media_id in enumerate(ids)}
            data.attributes = torch.from_numpy(matrix[[row[i] for i in data.log.item_ids]])
            data.truth = Simulation.load(folder)
        return data

    @classmethod
    def from_files(cls, interactions: Path, media_folder: Path | None, settings: Settings, cache_root: Path, seed: int = 0) -> EvaluationData:
        """An interactions file and a media folder (<media_id>.<ext>), or its uri column when media_folder is None."""
        log, uris = read_interactions(interactions)
        if media_folder is not None:
            media = MediaIndex.from_folder(media_folder, log.item_ids)
        elif uris:
            media = MediaIndex.from_uris(uris, interactions.parent, log.item_ids)
        else:
            raise ValueError(f"{interactions} has no uri column: name the media folder")
        key = hashlib.sha256(str(interactions.resolve()).encode()).hexdigest()[:12]
        name = interactions.parent.name if interactions.stem == "interactions" else interactions.stem
        return cls(name=name, log=log, settings=settings, cache_dir=cache_root / f"{name}-{key}", seed=seed, media=media)

    def available(self) -> frozenset[Requirement]:
        have = {"media": self.media is not None, "attributes": self.attributes is not None, "truth": self.truth is not None}
        return frozenset(name for name, ok in have.items() if ok)

    def extractor(self, channels: int | None = None) -> FeatureExtractor:
        """The settings' extractor, or one projecting to `channels` instead of settings.channels."""
        d = channels or self.settings.channels
        if d not in self._extractors:
            settings = self.settings if d == self.settings.channels else self.settings.model_copy(update={"channels": d})
            self._extractors[d] = FeatureExtractor(settings, projection=self.projection)
        return self._extractors[d]

    def catalogue(self, channels: int | None = None) -> Catalogue:
        """Every item's projected maps (the features our model scores), at settings.channels or
        `channels` per layer; row r = item index r."""
        d = channels or self.settings.channels
        if d not in self._catalogues:
            extractor = self.extractor(d)
            # A store keeps one version per media: other channel counts get their own file.
            kind = ("maps" if d == self.settings.channels else f"maps-d{d}") + ("-own" if self.projection else "")
            items = self._features(kind, extractor.version, extractor.extract_many)
            catalogue = Catalogue(extractor.version, [tuple(m.shape) for m in items[0].maps], capacity=len(items))
            rows = catalogue.add(items)
            if not torch.equal(rows, torch.arange(len(items))):
                raise RuntimeError("catalogue rows do not follow the log's item order")
            self._catalogues[d] = catalogue
        return self._catalogues[d]

    def fit_own_projection(self, items: np.ndarray, batch_size: int = 32) -> list[str]:
        """Fit the channel projection on these items' media (whole and mirrored, as `mmrec
        fit-projection --media` does) and extract every item's maps with it from now on. items:
        (R,) item indices, e.g. those seen before the validation period, so that no ranked period's
        new item shapes it. Returns the items skipped ("name (reason)"); raises if none decodes."""
        if self.media is None:
            raise ValueError(f"{self.name}: no media to fit a projection on")
        ids = [self.log.item_ids[i] for i in items]
        meta = {"source": f"{len(ids)} items of {self.name} x 2 views", "images": f"{len(ids)} items"}
        fitted = fit_projection([(m, lambda m=m: self.media.read(m)) for m in ids], mirrored, self.settings.input_size, batch_size, meta)
        if fitted.projection is None:
            raise ValueError(f"{self.name}: none of the {len(ids)} items' media is a decodable image")
        self.projection = fitted.projection
        self._extractors.clear()
        self._catalogues.clear()
        self._pooled.pop("maps", None)
        return fitted.skipped

    def pooled_features(self, kind: PooledKind) -> Tensor:
        """(I, F) float32 spatially pooled CNN features of every item.

        maps:        per-layer spatial means of the projected maps, concatenated (F = N * d)
        penultimate: block 18 of the backbone, global-average-pooled (F = 1280)
        """
        if kind not in self._pooled:
            if kind == "maps":
                self._pooled[kind] = torch.cat([m.mean(dim=(2, 3)) for m in self.catalogue().float_maps()], dim=1)
            else:
                penultimate = PenultimateExtractor(self.extractor())
                items = self._features("penultimate", penultimate.version, penultimate.extract_many)
                self._pooled[kind] = torch.stack([item.maps[0].float().flatten() for item in items])
        return self._pooled[kind]

    def _features(self, kind: str, version: FeatureVersion, extract: Extract) -> list[ItemFeatures]:
        if self.media is None:
            raise ValueError(f"{self.name}: no media to extract features from")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with SqliteFeatureStore(self.cache_dir / f"{kind}.sqlite3") as store:
            return cached_features(store, self.media, self.log.item_ids, version, extract, f"{kind} features")

    def positions_in_truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(U,), (I,) positions of log.user_ids and log.item_ids in the truth's id arrays."""
        if self.truth is None:
            raise ValueError(f"{self.name}: no ground truth")
        users = {u: k for k, u in enumerate(self.truth.user_ids)}
        items = {i: k for k, i in enumerate(self.truth.item_ids)}
        return np.array([users[u] for u in self.log.user_ids]), np.array([items[i] for i in self.log.item_ids])
