"""One test per patent claim (claims 1-9; 10-19 restate them for an apparatus and a medium)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmrec.model import ModelConfig, ParamLayout, SharedParams, UserTables, layer_readout, preference, score
from mmrec.bench.naive import conv_same

CFG = ModelConfig(n_layers=3, kernel_size=3, channels=4, pool=2)
GRIDS = [(8, 8), (6, 6), (4, 4)]


def setup(seed: int = 0, users: int = 2, items: int = 5, cfg: ModelConfig = CFG):
    gen = torch.Generator().manual_seed(seed)
    layout = ParamLayout(cfg)
    shared = SharedParams.initial(cfg).to(torch.float64)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=torch.float64)
    flat = shared.prior + 0.5 * torch.randn(users, layout.size, generator=gen, dtype=torch.float64)
    maps = [torch.randn(items, cfg.channels, h, w, generator=gen, dtype=torch.float64) for h, w in GRIDS[: cfg.n_layers]]
    return layout, shared, flat, maps


def readout(params, maps, shared, j, cfg=CFG):
    return layer_readout(maps[j], params.interest[:, j], params.channel[:, j], params.attention[:, j], shared.attention_channels[j], cfg)


def test_claim_1_first_feature_matrix_is_the_features_convolved_with_a_kernel_holding_user_interest():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    # The first feature matrix of user 0, item 0, layer 0, built from the claim's words:
    k, c = params.interest[0, 0], params.channel[0, 0]
    first = sum(c[ch] * conv_same(maps[0][0, ch], k) for ch in range(CFG.channels))
    expected_pooled = F.max_pool2d(first[None, None], 2, 2, ceil_mode=True)[0, 0]
    torch.testing.assert_close(readout(params, maps, shared, 0).pooled[0, 0], expected_pooled)
    # Preference data come from all N layers, and recommending uses them: a user's kernel moves scores.
    before = preference(params, maps, shared, CFG)
    changed = flat.clone()
    changed[0, layout.slices["interest"]] += 0.3
    after = preference(layout.split(changed), maps, shared, CFG)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])  # another user's kernels are untouched


def test_claim_2_preference_combines_first_feature_matrix_with_user_attention_weight():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    out = readout(params, maps, shared, 1)
    torch.testing.assert_close(out.preference(), (out.pooled * out.attention).sum(dim=(2, 3)).T)
    changed = flat.clone()
    changed[0, layout.slices["attention"]] += 0.5
    assert not torch.allclose(preference(layout.split(changed), maps, shared, CFG)[0], preference(params, maps, shared, CFG)[0])


def test_claim_3_attention_weight_is_the_normalised_convolution_of_an_attention_kernel():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    out = readout(params, maps, shared, 0)
    reduced = torch.einsum("c,chw->hw", shared.attention_channels[0], maps[0][1])
    coarse = F.avg_pool2d(reduced[None, None], 2, 2, ceil_mode=True)[0, 0]
    second = conv_same(coarse, params.attention[1, 0])
    torch.testing.assert_close(out.attention[1, 1], torch.softmax(second.flatten(), 0).reshape(second.shape))


def test_claim_4_max_pooling_reduces_the_first_feature_matrix_before_weighted_fusion():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    out = readout(params, maps, shared, 0)
    assert out.pooled.shape[-2:] == (4, 4)  # (8, 8) reduced by the 2 x 2 max pool
    assert out.attention.shape == out.pooled.shape
    # Per-channel reading: the pool also takes the max over channels.
    cfg = ModelConfig(n_layers=3, kernel_size=3, channels=4, pool=2, readout="per_channel")
    layout_pc, shared_pc, flat_pc, maps_pc = setup(cfg=cfg)
    params_pc = layout_pc.split(flat_pc)
    out_pc = readout(params_pc, maps_pc, shared_pc, 0, cfg)
    planes = torch.stack([conv_same(maps_pc[0][2, ch], params_pc.interest[1, 0]) for ch in range(4)])
    torch.testing.assert_close(out_pc.pooled[2, 1], F.max_pool2d(planes.amax(0)[None, None], 2, 2)[0, 0])


def test_claim_5_target_weight_matrix_weights_the_n_layer_preferences_for_ranking():
    layout, shared, flat, maps = setup()
    only_layer = []
    for j in range(CFG.n_layers):
        blocks = layout.split(flat.clone())
        blocks.fusion.zero_()
        blocks.fusion[:, j] = 1.0
        only_layer.append(preference(blocks, maps, shared, CFG))
    fusion = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], dtype=torch.float64)
    params = layout.split(flat.clone())
    params.fusion.copy_(fusion)
    fused = preference(params, maps, shared, CFG)
    torch.testing.assert_close(fused, sum(fusion[:, j : j + 1] * only_layer[j] for j in range(3)))
    # Recommending ranks by the fused score: user 1 ranks items exactly as its layer-2 preference does.
    ranking = score(params, maps, torch.zeros(5, dtype=torch.float64), shared, CFG)[1].argsort(descending=True)
    assert torch.equal(ranking, only_layer[1][1].argsort(descending=True))


def test_claim_6_interest_information_is_an_m_by_m_matrix_from_embedding_table_1():
    tables = UserTables(CFG, num_users=10)
    with torch.no_grad():
        tables.interest.weight.normal_()
    offsets = tables(torch.tensor([3, 7]))
    params = ParamLayout(CFG).split(offsets)
    assert params.interest.shape == (2, CFG.n_layers, CFG.kernel_size, CFG.kernel_size)
    m2 = CFG.kernel_size**2
    torch.testing.assert_close(params.interest[0, 1].flatten(), tables.interest.weight[3, m2 : 2 * m2])


def test_claim_7_attention_information_comes_from_a_second_embedding_table_with_its_own_weights():
    tables = UserTables(CFG, num_users=10)
    assert tables.attention.weight.data_ptr() != tables.interest.weight.data_ptr()
    with torch.no_grad():
        tables.attention.weight[4] = torch.arange(CFG.n_layers * CFG.kernel_size**2, dtype=torch.float32)
    params = ParamLayout(CFG).split(tables(torch.tensor([4])))
    assert params.attention.shape == (1, CFG.n_layers, CFG.kernel_size, CFG.kernel_size)
    assert params.attention[0, 2, 2, 2] == CFG.n_layers * CFG.kernel_size**2 - 1
    assert params.interest.abs().sum() == 0  # table 1 untouched by writing table 2


def test_claim_8_attention_weights_follow_the_claimed_softmax_formula():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    out = readout(params, maps, shared, 2)
    reduced = torch.einsum("c,chw->hw", shared.attention_channels[2], maps[2][3])
    coarse = F.avg_pool2d(reduced[None, None], 2, 2, ceil_mode=True)[0, 0]
    v = conv_same(coarse, params.attention[0, 2])
    w = torch.empty_like(v)
    for s in range(v.shape[0]):
        for t in range(v.shape[1]):
            w[s, t] = torch.exp(v[s, t]) / sum(torch.exp(v[a, b]) for a in range(v.shape[0]) for b in range(v.shape[1]))
    torch.testing.assert_close(out.attention[3, 0], w)
    torch.testing.assert_close(out.attention.sum(dim=(2, 3)), torch.ones(5, 2, dtype=torch.float64))


def test_claim_9_fused_preference_is_the_r_weighted_sum_over_layers():
    layout, shared, flat, maps = setup()
    params = layout.split(flat)
    per_layer = [readout(params, maps, shared, j).preference() for j in range(CFG.n_layers)]
    o_i = sum(params.fusion[:, j : j + 1] * per_layer[j] for j in range(CFG.n_layers))
    torch.testing.assert_close(preference(params, maps, shared, CFG), o_i)
