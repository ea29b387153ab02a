"""The online step's closed-form gradient equals autograd's gradient of OnlineLearner.loss."""
from __future__ import annotations

import pytest
import torch

from mmrec.model import ModelConfig, ParamLayout, SharedParams
from mmrec.online import ExampleBatch, Examples, OnlineConfig, OnlineLearner, StepRequest
from mmrec.user_state import UserState, encode_user_state

CASES = [
    (ModelConfig(), [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(readout="per_channel"), [(14, 14), (14, 14), (7, 7)]),
    (ModelConfig(n_layers=1, kernel_size=1, channels=1, pool=1), [(5, 5)]),
    (ModelConfig(n_layers=2, kernel_size=5, channels=4, pool=3), [(11, 9), (4, 6)]),
    (ModelConfig(n_layers=2, kernel_size=3, channels=3, pool=2, readout="per_channel"), [(9, 13), (3, 3)]),
    (ModelConfig(n_layers=4, kernel_size=3, channels=16, pool=2), [(8, 8), (6, 6), (5, 5), (2, 2)]),
]


def problem(cfg: ModelConfig, grids, dtype=torch.float64, seed: int = 0, items: int = 5):
    gen = torch.Generator().manual_seed(seed)
    shared = SharedParams.initial(cfg).to(dtype)
    shared.attention_channels = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.visual_bias = torch.randn(cfg.n_layers, cfg.channels, generator=gen, dtype=dtype)
    shared.global_bias = torch.tensor(-0.3, dtype=dtype)
    examples = Examples(
        maps=[torch.randn(items, cfg.channels, h, w, generator=gen, dtype=dtype) for h, w in grids],
        item_bias=torch.randn(items, generator=gen, dtype=dtype),
        labels=torch.tensor([1.0, 0.0, 0.0, 0.7, 0.0][:items], dtype=dtype),
        weights=torch.tensor([1.0, 0.5, 0.5, 2.0, 0.5][:items], dtype=dtype),
    )
    offsets = 0.5 * torch.randn(ParamLayout(cfg).size, generator=gen, dtype=dtype)
    return shared, examples, offsets


def autograd_loss_and_grad(learner: OnlineLearner, offsets, examples):
    leaf = offsets.clone().requires_grad_(True)
    loss = learner.loss(leaf, examples)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


@pytest.mark.parametrize("cfg,grids,at_prior", [(*case, False) for case in CASES] + [(*case, True) for case in CASES[:2]])
def test_closed_form_gradient_equals_autograd_in_float64(cfg, grids, at_prior):
    shared, examples, offsets = problem(cfg, grids)
    if at_prior:  # a new user: zero channel factor, so every pooling window ties
        offsets = torch.zeros_like(offsets)
    learner = OnlineLearner(cfg, shared, OnlineConfig(l2=0.01))
    loss, grad = learner.loss_and_grad(offsets, examples)
    want_loss, want_grad = autograd_loss_and_grad(learner, offsets, examples)
    assert want_grad.abs().max() > 0
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg,grids", CASES[:2])
def test_ties_between_channels_split_the_gradient_as_amax_does(cfg, grids):
    """Identical channels tie in the per_channel max; constant maps tie in every pooling window."""
    shared, examples, offsets = problem(cfg, grids, seed=1)
    maps = [m.clone() for m in examples.maps]
    for m in maps:
        m[:, 1] = m[:, 0]  # channels 0 and 1 equal everywhere
        m[2] = 0.25  # item 2 constant
    tied = Examples(maps, examples.item_bias, examples.labels, examples.weights)
    learner = OnlineLearner(cfg, shared, OnlineConfig())
    _, grad = learner.loss_and_grad(offsets, tied)
    torch.testing.assert_close(grad, autograd_loss_and_grad(learner, offsets, tied)[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg,grids", CASES[:2])
def test_float32_gradients_along_a_trajectory_match_autograd(cfg, grids):
    """In float32, at every point of ten production steps, the closed form agrees with autograd."""
    shared, examples, _ = problem(cfg, grids, dtype=torch.float32, seed=2)
    learner = OnlineLearner(cfg, shared, OnlineConfig())
    state = UserState.new(cfg)
    for k in range(10):
        _, fast = learner.loss_and_grad(state.offsets, examples)
        _, slow = autograd_loss_and_grad(learner, state.offsets, examples)
        torch.testing.assert_close(fast, slow, rtol=1e-3, atol=2e-5)
        state = learner.step(state, examples, f"e{k}").state


def test_step_is_bit_identical_across_runs_and_batch_company():
    """Deterministic: the same state and examples give the same bytes, whatever ran before."""
    cfg, grids = CASES[0]
    shared, examples, _ = problem(cfg, grids, dtype=torch.float32, seed=3)
    learner = OnlineLearner(cfg, shared, OnlineConfig())
    first = encode_user_state(learner.step(UserState.new(cfg), examples, "e1").state, cfg)
    other = Examples([m[:2] for m in examples.maps], examples.item_bias[:2], examples.labels[:2], examples.weights[:2])
    learner.step(UserState.new(cfg), other, "e0")
    again = encode_user_state(learner.step(UserState.new(cfg), examples, "e1").state, cfg)
    assert first == again


def test_one_example_and_no_negatives():
    cfg, grids = CASES[0]
    shared, examples, offsets = problem(cfg, grids, items=1)
    learner = OnlineLearner(cfg, shared, OnlineConfig())
    _, grad = learner.loss_and_grad(offsets, examples)
    torch.testing.assert_close(grad, autograd_loss_and_grad(learner, offsets, examples)[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cfg,grids", [*CASES, (ModelConfig(), [(8, 8), (4, 4), (2, 2)])])  # the last: a 64-pixel input
@pytest.mark.parametrize("users", [4, 33, 64])
def test_a_batch_of_users_gives_each_the_loss_and_gradient_it_gets_alone(cfg, grids, users):
    """loss_and_grad_many runs U users' events as one batch. In float32 (what the worker runs) each
    row equals the single-user call bit for bit, wherever it sits in the batch, so a worker's batched
    steps replay exactly one by one; in float64 to 1e-12, and autograd's gradient to 1e-10."""
    for dtype in (torch.float32, torch.float64):
        problems = [problem(cfg, grids, dtype=dtype, seed=10 + u) for u in range(users)]
        learner = OnlineLearner(cfg, problems[0][0], OnlineConfig(l2=0.01))
        examples = [Examples(ex.maps, ex.item_bias, ex.labels * (u % 2 + 0.5), ex.weights) for u, (_, ex, _) in enumerate(problems)]
        offsets = torch.stack([off for _, _, off in problems])
        offsets[1] = 0  # a new user (every pooling window ties) beside trained ones
        losses, grads = learner.loss_and_grad_many(offsets, ExampleBatch.of(examples))
        for u in range(users):
            loss, grad = learner.loss_and_grad(offsets[u], examples[u])
            if dtype == torch.float32:
                assert torch.equal(losses[u], loss) and torch.equal(grads[u], grad), f"user {u} of {users}"
            else:
                torch.testing.assert_close((losses[u], grads[u]), (loss, grad), rtol=1e-12, atol=1e-14)
            if dtype == torch.float64 and u % 8 == 0:
                want_loss, want_grad = autograd_loss_and_grad(learner, offsets[u], examples[u])
                torch.testing.assert_close(grads[u], want_grad, rtol=1e-10, atol=1e-12)
                torch.testing.assert_close(losses[u], want_loss, rtol=0, atol=1e-12)


def test_step_many_equals_steps_one_by_one_and_skips_duplicates():
    cfg, grids = CASES[0]
    learner = OnlineLearner(cfg, problem(cfg, grids, dtype=torch.float32)[0], OnlineConfig())
    requests = []
    for u in range(5):
        _, examples, offsets = problem(cfg, grids, dtype=torch.float32, seed=20 + u, items=5 if u != 3 else 2)
        state = UserState.new(cfg)
        state.offsets = offsets
        requests.append(StepRequest(state, examples, f"e{u}", partition=0, position=100 + u, now=7.0, engaged_media=f"m{u}"))
    done = learner.step(requests[4].state, requests[4].examples, "e4", partition=0, position=104).state
    requests[4] = StepRequest(done, requests[4].examples, "e4", partition=0, position=104)  # already applied
    batched = learner.step_many(requests)
    assert [r.applied for r in batched] == [True, True, True, True, False]
    for request, result in zip(requests, batched):
        alone = learner.step(request.state, request.examples, request.event_id, request.partition, request.position, request.now, request.engaged_media)
        assert encode_user_state(result.state, cfg) == encode_user_state(alone.state, cfg)
        assert result.loss == alone.loss or (result.loss != result.loss and alone.loss != alone.loss)  # nan for the duplicate
