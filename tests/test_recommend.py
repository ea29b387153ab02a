"""Exact top-K over a catalogue, and the examples an event becomes."""
from __future__ import annotations

import torch

import mmrec.recommend as recommend
from mmrec.catalogue import Catalogue
from mmrec.examples import NegativeSampler, event_examples
from mmrec.feedback import EventKind, FeedbackWeights
from mmrec.model import ModelConfig, ParamLayout, SharedParams, score
from mmrec.recommend import Recommender
from mmrec.user_state import id_hash
from tests.synthetic_items import VERSION, make_items

CFG = ModelConfig()


def setup(items: int = 60, users: int = 3):
    catalogue = Catalogue(VERSION)
    catalogue.add(make_items(items))
    catalogue.item_bias[:] = torch.linspace(-1, 1, items)
    offsets = 0.3 * torch.randn(users, ParamLayout(CFG).size, generator=torch.Generator().manual_seed(0))
    return catalogue, offsets


def test_top_k_matches_full_scoring_and_ordering():
    catalogue, offsets = setup()
    rec = Recommender(CFG, SharedParams.initial(CFG))
    full = score(ParamLayout(CFG).split(rec.shared.prior + offsets), catalogue.float_maps(), catalogue.item_bias, rec.shared, CFG)
    top = rec.top_k(offsets, catalogue, k=10)
    for u in range(3):
        expected = full[u].topk(10)
        assert [r.media_id for r in top[u]] == [catalogue.ids[i] for i in expected.indices.tolist()]
        torch.testing.assert_close(torch.tensor([r.score for r in top[u]]), expected.values)


def test_chunked_scoring_equals_one_chunk(monkeypatch):
    catalogue, offsets = setup(items=37)
    rec = Recommender(CFG, SharedParams.initial(CFG))
    whole = rec.scores(offsets, catalogue)
    monkeypatch.setattr(recommend, "_CHUNK_BYTES", 4 * 196 * 3 * 5)  # five items per chunk
    torch.testing.assert_close(rec.scores(offsets, catalogue), whole)


def test_seen_media_are_left_out_even_as_the_catalogue_grows():
    catalogue, offsets = setup(items=20)
    rec = Recommender(CFG, SharedParams.initial(CFG))
    best = rec.top_k(offsets[:1], catalogue, k=3)[0]
    catalogue.add(make_items(5, start=20))
    seen = [id_hash(best[0].media_id), id_hash("m0000022"), id_hash("not-in-catalogue")]
    again = rec.top_k(offsets[:1], catalogue, k=25, seen=[seen])[0]
    ids = [r.media_id for r in again]
    assert best[0].media_id not in ids and "m0000022" not in ids and len(ids) == 23


def test_event_examples_label_the_item_and_sample_other_items_deterministically():
    catalogue, _ = setup(items=30)
    weights = FeedbackWeights()
    click = weights.feedback(EventKind.CLICK)
    sampler = NegativeSampler(catalogue)
    a = event_examples(catalogue, sampler, "m0000004", click, "e1", negatives=6, weights=weights)
    b = event_examples(catalogue, sampler, "m0000004", click, "e1", negatives=6, weights=weights)
    c = event_examples(catalogue, sampler, "m0000004", click, "e2", negatives=6, weights=weights)
    assert a.labels.tolist() == [1.0] + [0.0] * 6
    assert a.weights.tolist() == [1.0] + [0.5] * 6
    assert all(torch.equal(x, y) for x, y in zip(a.maps, b.maps))
    assert not all(torch.equal(x, y) for x, y in zip(a.maps, c.maps))
    own = catalogue.float_maps(catalogue.rows(["m0000004"]))[0][0]
    assert torch.equal(a.maps[0][0], own)
    assert not any(torch.equal(a.maps[0][k], own) for k in range(1, 7))


def test_negative_events_get_no_sampled_negatives():
    catalogue, _ = setup(items=10)
    weights = FeedbackWeights()
    skip = event_examples(catalogue, NegativeSampler(catalogue), "m0000001", weights.feedback(EventKind.SKIP), "e", negatives=4, weights=weights)
    assert skip.labels.tolist() == [0.0] and skip.weights.tolist() == [1.0]


def test_negatives_depend_on_the_set_of_items_not_their_arrival_order():
    items = make_items(40)
    forward, backward = Catalogue(VERSION), Catalogue(VERSION)
    forward.add(items)
    backward.add(items[::-1])
    picks = []
    for catalogue in (forward, backward):
        sampler = NegativeSampler(catalogue)
        rows = sampler.sample("event-7", 12, exclude_row=int(catalogue.rows(["m0000003"])[0]))
        picks.append([catalogue.ids[r] for r in rows])
    assert picks[0] == picks[1] and "m0000003" not in picks[0]
    assert len(set(picks[0])) > 6  # spread over the catalogue


def test_sampler_follows_a_growing_catalogue():
    catalogue = Catalogue(VERSION)
    catalogue.add(make_items(2))
    sampler = NegativeSampler(catalogue)
    assert set(sampler.sample("e", 20, exclude_row=0)) == {1}
    catalogue.add(make_items(30, start=2))
    assert len(set(sampler.sample("e", 40, exclude_row=0))) > 10
