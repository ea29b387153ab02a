"""Every model `mmrec evaluate` knows: name -> "module:attribute" of its RankerSpec.

Adding a model is one line here; its module is imported only when it is evaluated. A run that names
no models evaluates DEFAULT: every model but the confirmatory study's variants of the hybrid, less
those whose requirements the data cannot meet (e.g. the benchmark's references on a user's own data).
"""
from __future__ import annotations

import importlib

from mmrec.evaluation.protocol import RankerSpec

RANKERS: dict[str, str] = {
    "mmrec": "mmrec.ranker:SPEC",
    "mmrec-hybrid": "mmrec.ranker:HYBRID_SPEC",
    "mmrec-hybrid-d8": "mmrec.ranker:HYBRID_D8_SPEC",
    "mmrec-hybrid-d12": "mmrec.ranker:HYBRID_D12_SPEC",
    "mmrec-hybrid-d16": "mmrec.ranker:HYBRID_D16_SPEC",
    "most-popular": "mmrec.baselines.popularity:SPEC",
    "bpr-mf": "mmrec.baselines.factor:BPR_MF",
    "vbpr": "mmrec.baselines.factor:VBPR",
    "perfect-perception": "mmrec.baselines.factor:PERFECT_PERCEPTION",
    "oracle": "mmrec.baselines.oracle:SPEC",
}

# The registered hybrid point at other channel counts (docs/visual-taste.md): evaluated when named.
STUDY_VARIANTS = frozenset({"mmrec-hybrid-d8", "mmrec-hybrid-d12", "mmrec-hybrid-d16"})
DEFAULT = tuple(name for name in RANKERS if name not in STUDY_VARIANTS)


def load_spec(name: str) -> RankerSpec:
    """The registered spec. Raises KeyError listing the known names."""
    if name not in RANKERS:
        raise KeyError(f"unknown ranker {name!r}; registered: {', '.join(RANKERS)}")
    module_name, attribute = RANKERS[name].split(":")
    spec = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(spec, RankerSpec) or spec.name != name:
        raise TypeError(f"{RANKERS[name]} is not the RankerSpec named {name!r}")
    return spec
