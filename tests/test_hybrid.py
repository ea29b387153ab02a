"""The hybrid extension (collab_dim > 0, the pairwise objective): its score equals the naive
reference, its closed-form online gradient equals autograd, the retrieval stage stays exact where it
was, training learns collaborative structure no pixel shows, and collab_dim = 0 is the faithful
model unchanged."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrec.artifact import ModelArtifact, load_artifact, save_artifact
from mmrec.bench.naive import reference_score
from mmrec.catalogue import Catalogue
from mmrec.feedback import EventKind
from mmrec.features import FeatureVersion
from mmrec.interaction_log import EVENT_KINDS, InteractionLog
from mmrec.model import ModelConfig, ParamLayout, SharedParams, pair_scores, score
from mmrec.online import Examples, OnlineConfig, OnlineLearner
from mmrec.recommend import Recommender
from mmrec.retrieval import RetrievalConfig, Retriever
from mmrec.training import PatentModel, TrainConfig, fit
from mmrec.user_state import UserState
from tests.synthetic_items import VERSION, make_item, make_items

GRIDS = [(14, 14), (14, 14), (7, 7)]
HYBRID = ModelConfig(collab_dim=3, objective="pairwise")
CONFIGS = [
    ModelConfig(collab_dim=3),
    HYBRID,
    ModelConfig(objective="pairwise"),
    ModelConfig(readout="per_channel", collab_dim=2, objective="pairwise"),
    ModelConfig(n_layers=2, kernel_size=5, channels=4, pool=3, collab_dim=5),
]


def problem(cfg: ModelConfig, users: int, items: int, grids, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shared = SharedParams.initial(cfg).to(dtype)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.visual_bias = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.global_bias = torch.tensor(-0.3, dtype=dtype)
    offsets = 0.5 * torch.randn(users, ParamLayout(cfg).size, generator=gen, dtype=dtype)
    maps = [torch.randn(items, cfg.channels, h, w, generator=gen, dtype=dtype) for h, w in grids[: cfg.n_layers]]
    item_bias = torch.randn(items, generator=gen, dtype=dtype)
    factors = torch.randn(items, cfg.collab_dim, generator=gen, dtype=dtype)
    return shared, offsets, maps, item_bias, factors


def grids_of(cfg: ModelConfig):
    return GRIDS if cfg.n_layers == 3 else [(11, 9), (4, 6)]


def test_collab_dim_zero_is_the_faithful_layout():
    faithful = ParamLayout(ModelConfig())
    assert faithful.size == 3 * (2 * 9 + 8 + 1) + 1  # N (2 m^2 + d + 1) + 1, as before the extension
    assert faithful.slices["collab"] == slice(faithful.size, faithful.size)
    assert ParamLayout(HYBRID).size == faithful.size + 3


@pytest.mark.parametrize("cfg", CONFIGS)
def test_hybrid_scores_equal_the_naive_reference(cfg):
    shared, offsets, maps, item_bias, factors = problem(cfg, 4, 6, grids_of(cfg))
    params = ParamLayout(cfg).split(shared.prior + offsets)
    fast = score(params, maps, item_bias, shared, cfg, factors)
    torch.testing.assert_close(fast, reference_score(params, maps, item_bias, shared, cfg, factors), rtol=0, atol=1e-10)
    pairs = pair_scores(ParamLayout(cfg).split(shared.prior + offsets[[1] * 6]), maps, item_bias, shared, cfg, factors)
    torch.testing.assert_close(pairs, fast[1], rtol=0, atol=1e-10)


def test_the_collaborative_term_is_p_dot_q():
    shared, offsets, maps, item_bias, factors = problem(HYBRID, 2, 5, GRIDS)
    layout = ParamLayout(HYBRID)
    params = layout.split(shared.prior + offsets)
    without = offsets.clone()
    without[:, layout.slices["collab"]] = 0
    difference = score(params, maps, item_bias, shared, HYBRID, factors) - score(
        layout.split(shared.prior + without), maps, item_bias, shared, HYBRID, factors
    )
    torch.testing.assert_close(difference, offsets[:, layout.slices["collab"]] @ factors.T)
    with pytest.raises(ValueError, match="item factors"):
        score(params, maps, item_bias, shared, HYBRID)


def examples_of(cfg: ModelConfig, label: float = 1.0, dtype=torch.float64, seed: int = 1) -> tuple[SharedParams, Examples, torch.Tensor]:
    shared, offsets, maps, item_bias, factors = problem(cfg, 1, 5, grids_of(cfg), dtype, seed)
    labels = torch.tensor([label, 0.0, 0.0, 0.0, 0.0], dtype=dtype)
    weights = torch.tensor([1.5, 0.5, 0.5, 0.5, 0.5], dtype=dtype)
    return shared, Examples(maps, item_bias, labels, weights, factors if cfg.collab_dim else None), offsets[0]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("label", [1.0, 0.6])
def test_closed_form_gradient_equals_autograd(cfg, label):
    shared, examples, offsets = examples_of(cfg, label)
    learner = OnlineLearner(cfg, shared, OnlineConfig(l2=0.01))
    loss, grad = learner.loss_and_grad(offsets, examples)
    leaf = offsets.clone().requires_grad_(True)
    want = learner.loss(leaf, examples)
    (want_grad,) = torch.autograd.grad(want, leaf)
    collab = ParamLayout(cfg).slices["collab"]
    assert want_grad[collab].abs().sum() > 0 or not cfg.collab_dim
    torch.testing.assert_close(loss, want.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_pairwise_loss_is_bpr_of_the_event_item_against_the_sampled_ones():
    shared, examples, offsets = examples_of(HYBRID)
    learner = OnlineLearner(HYBRID, shared, OnlineConfig(l2=0.0))
    params = ParamLayout(HYBRID).split((shared.prior + offsets)[None])
    s = score(params, examples.maps, examples.item_bias, shared, HYBRID, examples.item_factors)[0]
    by_hand = sum(-torch.log(torch.sigmoid(s[0] - s[k])) for k in range(1, 5)) * 1.5 / 4
    torch.testing.assert_close(learner.loss(offsets, examples), by_hand)


def test_a_pairwise_step_without_signal_records_the_event_and_moves_nothing():
    shared, examples, _ = examples_of(HYBRID, label=0.0, dtype=torch.float32)
    learner = OnlineLearner(HYBRID, shared, OnlineConfig())
    state = UserState.new(HYBRID)
    state.offsets = torch.randn(ParamLayout(HYBRID).size)
    result = learner.step(state, examples, "skip-1", partition=0, position=7)
    assert result.applied and result.state.version == state.version + 1 and result.state.position == 7
    assert torch.equal(result.state.offsets, state.offsets) and torch.equal(result.state.accum, state.accum)
    engaged = learner.step(state, Examples(examples.maps, examples.item_bias, torch.tensor([1.0, 0, 0, 0, 0]), examples.weights, examples.item_factors), "click-1")
    assert not torch.equal(engaged.state.offsets, state.offsets)


def hybrid_catalogue(items: int, seed: int = 0) -> Catalogue:
    cat = Catalogue(VERSION, factor_dim=HYBRID.collab_dim)
    cat.add(make_items(items))
    gen = torch.Generator().manual_seed(seed)
    cat.item_bias[:] = 0.3 * torch.randn(items, generator=gen)
    cat.item_factors[:] = torch.randn(items, HYBRID.collab_dim, generator=gen)
    return cat


def test_catalogue_factors_survive_growth_and_replacement():
    cat = hybrid_catalogue(5)
    before = cat.item_factors.clone()
    cat.add(make_items(35, start=5))  # grows past the initial capacity
    torch.testing.assert_close(cat.item_factors[:5], before)
    assert cat.item_factors[5:].abs().sum() == 0  # new items: no collaborative signal yet
    cat.add(make_items(1))  # replaced in place keeps its factors
    torch.testing.assert_close(cat.item_factors[:1], before[:1])


def test_a_full_shortlist_gives_exact_top_k_with_the_collaborative_term():
    cat = hybrid_catalogue(40)
    shared = SharedParams.initial(HYBRID)
    offsets = 0.3 * torch.randn(3, ParamLayout(HYBRID).size, generator=torch.Generator().manual_seed(2))
    exact = Recommender(HYBRID, shared, RetrievalConfig(mode="exact")).top_k(offsets, cat, k=7)
    short = Recommender(HYBRID, shared, RetrievalConfig(mode="shortlist", shortlist_min=40)).top_k(offsets, cat, k=7)
    assert [[r.media_id for r in u] for u in short] == [[r.media_id for r in u] for u in exact]
    retriever = Retriever(HYBRID, shared, RetrievalConfig(mode="shortlist"))
    rows = retriever.shortlist(offsets, cat, 12)
    full = Recommender(HYBRID, shared, RetrievalConfig(mode="exact")).scores(offsets, cat)
    torch.testing.assert_close(retriever.rescore(offsets, cat, rows), full.gather(1, rows))


def test_a_surrogate_of_pure_collaborative_scores_shortlists_the_exact_top_k():
    """With the visual terms switched off (zero channel factors) the score is b + p . q, which the
    surrogate holds exactly: a small shortlist already contains the exact top 5."""
    cat = hybrid_catalogue(200, seed=3)
    shared = SharedParams.initial(HYBRID)
    layout = ParamLayout(HYBRID)
    offsets = torch.zeros(4, layout.size)
    offsets[:, layout.slices["collab"]] = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    exact = Recommender(HYBRID, shared, RetrievalConfig(mode="exact")).top_k(offsets, cat, k=5)
    short = Recommender(HYBRID, shared, RetrievalConfig(mode="shortlist", shortlist_min=5, shortlist_factor=1)).top_k(offsets, cat, k=5)
    assert [[r.media_id for r in u] for u in short] == [[r.media_id for r in u] for u in exact]


def co_engagement_log(items: int = 40, users: int = 20, seed: int = 0) -> tuple[Catalogue, InteractionLog]:
    """Two user groups, each clicking only its own half of the items; every item has the same maps,
    so only a collaborative term can learn who likes what."""
    catalogue = Catalogue(VERSION)
    catalogue.add([make_item(f"m{i:03d}", seed=0) for i in range(items)])
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(3000):
        user = int(rng.integers(users))
        item = int(rng.integers(items))
        rows.append((user, item, (item % 2) == (user % 2)))
    log = InteractionLog(
        user=np.array([r[0] for r in rows], dtype=np.int64),
        item=np.array([r[1] for r in rows], dtype=np.int64),
        kind=np.array([EVENT_KINDS.index(EventKind.CLICK if r[2] else EventKind.SKIP) for r in rows], dtype=np.int8),
        label=np.array([float(r[2]) for r in rows], dtype=np.float32),
        weight=np.ones(len(rows), dtype=np.float32),
        time=np.arange(len(rows), dtype=np.float64),
        user_ids=tuple(f"u{u:02d}" for u in range(users)),
        item_ids=tuple(catalogue.ids),
    )
    return catalogue, log


def group_auc(cfg: ModelConfig, config: TrainConfig = TrainConfig(epochs=8, batch_size=128, learning_rate=0.05, user_l2=1e-4)) -> float:
    """AUC of the fitted model's scores for each user's own group of items against the other's."""
    torch.manual_seed(0)
    catalogue, log = co_engagement_log()
    model = PatentModel(cfg, log.num_users, log.num_items)
    fit(model, log, catalogue, config, progress=False)
    scores = model.scores(torch.arange(log.num_users), torch.arange(log.num_items), catalogue)
    mine = (torch.arange(log.num_items)[None, :] % 2) == (torch.arange(log.num_users)[:, None] % 2)
    pos, neg = scores[mine].view(log.num_users, -1), scores[~mine].view(log.num_users, -1)
    return float((pos[:, :, None] > neg[:, None, :]).double().mean())


def test_training_the_hybrid_learns_what_co_engagement_says_and_pixels_do_not():
    assert group_auc(HYBRID) > 0.95
    assert group_auc(ModelConfig()) < 0.6  # the faithful model sees identical maps


def test_artifact_round_trip_with_item_factors(tmp_path):
    cfg = HYBRID
    gen = torch.Generator().manual_seed(0)
    artifact = ModelArtifact(
        cfg=cfg,
        feature_version=FeatureVersion("mobilenet_v2-b0353104@224:6,13,17", "pca-abc-d8"),
        shared=SharedParams.initial(cfg),
        item_ids=("a", "b"),
        item_bias=torch.tensor([0.5, -0.25]),
        item_factors=torch.randn(2, cfg.collab_dim, generator=gen),
        user_ids=("u1",),
        user_offsets=torch.randn(1, ParamLayout(cfg).size, generator=gen),
    )
    digest = save_artifact(artifact, tmp_path / "m.safetensors")
    loaded = load_artifact(tmp_path / "m.safetensors", expected_sha256=digest)
    assert loaded.cfg == cfg
    torch.testing.assert_close(loaded.item_factors, artifact.item_factors)


def test_the_memory_stage_moves_the_item_memory_only():
    catalogue, log = co_engagement_log()
    model = PatentModel(HYBRID, log.num_users, log.num_items)
    visual = {name: p.detach().clone() for name, p in model.named_parameters() if name in ("attention_channels", "visual_bias")}
    interest = model.users.interest.weight.detach().clone()
    factors = model.item_factors.detach().clone()
    history = fit(model, log, catalogue, TrainConfig(epochs=0, memory_epochs=2, batch_size=128, learning_rate=0.05), progress=False)
    assert len(history) == 2
    assert not torch.equal(model.item_factors, factors) and float(model.users.collab.weight.detach().abs().sum()) > 0
    assert torch.equal(model.users.interest.weight, interest)
    assert all(torch.equal(getattr(model, name), before) for name, before in visual.items())


def test_the_memory_stage_needs_the_hybrid_extension():
    catalogue, log = co_engagement_log()
    with pytest.raises(ValueError, match="collab_dim"):
        fit(PatentModel(ModelConfig(), log.num_users, log.num_items), log, catalogue, TrainConfig(memory_epochs=1), progress=False)


def test_the_hybrid_fitted_memory_first_learns_co_engagement():
    assert group_auc(HYBRID, TrainConfig(epochs=4, memory_epochs=4, batch_size=128, learning_rate=0.05, user_l2=1e-4)) > 0.95


def test_memory_logits_and_pair_parts_split_the_logit_into_visual_and_item_memory():
    catalogue, log = co_engagement_log()
    model = PatentModel(HYBRID, log.num_users, log.num_items)
    with torch.no_grad():
        model.item_bias.normal_()
        model.users.collab.weight.normal_()
    users, items = torch.arange(10), torch.arange(10, 20)
    params = model.layout.split(model.prior + model.users(users))
    expected = model.item_bias[items] + (params.collab * model.item_factors[items]).sum(dim=1)
    assert torch.allclose(model.memory_logits(users, items, catalogue), model.global_bias + expected, atol=1e-6)
    visual, memory = model.pair_parts(users, items, catalogue)
    assert torch.allclose(visual + memory, model.pair_logits(users, items, catalogue), atol=1e-5)
    assert torch.allclose(memory, expected, atol=1e-6)
    with torch.no_grad():  # an item never trained on has no memory: its logit is the visual part alone
        model.item_bias.zero_()
        model.item_factors.zero_()
    visual_alone, memory = model.pair_parts(users, items, catalogue)
    assert torch.equal(memory, torch.zeros(10)) and torch.allclose(visual_alone, visual, atol=1e-5)


def test_modality_dropout_trains_each_part_alone_in_its_share_of_examples():
    from mmrec.training import _logits, _modality_masks

    keep_visual, keep_memory = _modality_masks(100_000, 0.25, torch.Generator().manual_seed(0))
    assert bool(((keep_visual + keep_memory) >= 1).all())  # never both left out
    assert abs(float((keep_visual == 0).float().mean()) - 0.25) < 0.01
    assert abs(float((keep_memory == 0).float().mean()) - 0.25) < 0.01
    assert _modality_masks(10, 0.0, torch.Generator()) is None

    catalogue, log = co_engagement_log()
    model = PatentModel(HYBRID, log.num_users, log.num_items)
    users, items = torch.arange(8), torch.arange(8)
    for keep, moved, still in (((0.0, 1.0), model.item_bias, model.visual_bias), ((1.0, 0.0), model.visual_bias, model.item_bias)):
        model.zero_grad()
        masks = (torch.full((8,), keep[0]), torch.full((8,), keep[1]))
        _logits(model, model.pair_logits, users, items, catalogue, masks).sum().backward()
        assert float(moved.grad.abs().sum()) > 0
        assert still.grad is None or float(still.grad.abs().sum()) == 0


def test_modality_dropout_is_checked():
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainConfig(modality_dropout=0.6)
    catalogue, log = co_engagement_log()
    with pytest.raises(ValueError, match="collab_dim"):
        fit(PatentModel(ModelConfig(), log.num_users, log.num_items), log, catalogue, TrainConfig(modality_dropout=0.2), progress=False)


def test_the_hybrid_with_both_options_still_learns_co_engagement():
    config = TrainConfig(epochs=6, memory_epochs=2, modality_dropout=0.25, batch_size=128, learning_rate=0.05, user_l2=1e-4)
    assert group_auc(HYBRID, config) > 0.9
