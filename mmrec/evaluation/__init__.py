"""Offline evaluation: global-time split, full ranking over all items, Recall/NDCG@K and AUC overall
and on cold-start items, a prequential replay, baselines tuned on validation (docs/visual-taste.md)."""
