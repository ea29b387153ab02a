"""`mmrec bench update`: online steps per second and the latency of one step (p50, p99), for the
closed-form step the worker runs, beside the same step with autograd's gradient, in the same run.

A step is what one click costs the learning agent: the event's examples (the item and 4 sampled
negatives, read from the catalogue: `apply`), and the update itself (`step`). The agent takes events
in batches and steps different users' events together (`apply_many`): `event_batched` measures that
path per event (events of 200 users, so a batch of 64 holds some users twice: their later events
wait for a second round).
"""
from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import torch

from mmrec.bench.common import emit, quantile
from mmrec.bench.synthetic import concept_items
from mmrec.catalogue import Catalogue
from mmrec.features import FeatureVersion, ItemFeatures
from mmrec.feedback import FeedbackWeights
from mmrec.interaction_step import InteractionLearner
from mmrec.messages import Interaction
from mmrec.model import ModelConfig, SharedParams
from mmrec.online import ExampleBatch, Examples, OnlineConfig, OnlineLearner
from mmrec.user_state import UserState

_VERSION = FeatureVersion(backbone="synthetic", projection="synthetic")


class AutogradLearner(OnlineLearner):
    """The same step with its gradient from autograd over OnlineLearner.loss (the baseline)."""

    def loss_and_grad_many(self, offsets: torch.Tensor, batch: ExampleBatch) -> tuple[torch.Tensor, torch.Tensor]:
        b = batch.labels.shape[1]
        losses, grads = [], []
        for u, row in enumerate(offsets):
            factors = None if batch.item_factors is None else batch.item_factors[u]
            examples = Examples([m[u * b : (u + 1) * b] for m in batch.maps], batch.item_bias[u], batch.labels[u], batch.weights[u], factors)
            leaf = row.detach().clone().requires_grad_(True)
            loss = self.loss(leaf, examples)
            (grad,) = torch.autograd.grad(loss, leaf)
            losses.append(loss.detach())
            grads.append(grad)
        return torch.stack(losses), torch.stack(grads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=3000, help="events applied per learner")
    parser.add_argument("--items", type=int, default=2000, help="catalogue items (negatives are sampled from it)")
    parser.add_argument("--batch", type=int, default=64, help="events per apply_many call (the learn agent's MMREC_LEARN_BATCH)")


def run(args: argparse.Namespace) -> dict:
    cfg = ModelConfig()
    shared = SharedParams.initial(cfg)
    maps, _ = concept_items(args.items, seed=5)
    catalogue = Catalogue(_VERSION)
    catalogue.add(
        ItemFeatures(f"m{i}", "image", tuple(m[i].to(torch.float16) for m in maps), _VERSION, 0.0) for i in range(args.items)
    )
    gen = torch.Generator().manual_seed(1)
    users = [f"u{u}" for u in range(200)]
    now = datetime.now(timezone.utc)
    events = [
        Interaction(
            event_id=f"e{k}", user_id=users[int(torch.randint(len(users), (1,), generator=gen))],
            media_id=f"m{int(torch.randint(args.items, (1,), generator=gen))}", kind="click", timestamp=now,
        )
        for k in range(args.steps)
    ]
    results = {}
    for name, learner_type in (("closed_form", OnlineLearner), ("autograd", AutogradLearner), ("closed_form_again", OnlineLearner)):
        learner = learner_type(cfg, shared, OnlineConfig())
        interactions = InteractionLearner(learner, catalogue, FeedbackWeights(), negatives=4)
        states = {u: UserState.new(cfg) for u in users}
        applies, steps = [], []
        count = args.steps if name != "autograd" else max(200, args.steps // 5)
        for k, event in enumerate(events[:count]):
            t0 = time.perf_counter()
            result = interactions.apply(states[event.user_id], event, partition=0, offset=k)
            t1 = time.perf_counter()
            states[event.user_id] = result.state
            applies.append(t1 - t0)
        # the step alone, on fixed examples (no catalogue reads)
        examples = _examples(catalogue, 5)
        state = UserState.new(cfg)
        for k in range(count):
            t0 = time.perf_counter()
            state = learner.step(state, examples, f"s{k}").state
            steps.append(time.perf_counter() - t0)
        results[name] = (applies[50:], steps[50:])
    batched = _batched_events(cfg, shared, catalogue, users, events, args.batch)
    closed_apply, closed_step = results["closed_form"]
    again_apply, again_step = results["closed_form_again"]
    auto_apply, auto_step = results["autograd"]

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": 1e3 * quantile(values, 0.5), "p99_ms": 1e3 * quantile(values, 0.99), "per_s": len(values) / sum(values)}

    figures = {
        "event": summary(closed_apply),
        "event_repeat": summary(again_apply),
        "step": summary(closed_step),
        "step_repeat": summary(again_step),
        "autograd_event": summary(auto_apply),
        "autograd_step": summary(auto_step),
        "speedup_p50_vs_autograd": quantile(auto_apply, 0.5) / quantile(closed_apply, 0.5),
        "event_batched": {"per_event_p50_ms": 1e3 * quantile(batched, 0.5), "per_s": len(batched) / sum(batched)},
        "batched_speedup_p50": quantile(closed_apply, 0.5) / quantile(batched, 0.5),
    }
    config = {"N": cfg.n_layers, "m": cfg.kernel_size, "d": cfg.channels, "P": learner.layout.size, "examples_per_event": 5,
              "grids": [(h, w) for _, h, w in (m.shape[1:] for m in maps)], "catalogue_items": args.items, "steps": args.steps,
              "batch": args.batch, "device": "cpu"}
    notes = [
        "event: InteractionLearner.apply (examples read from the catalogue + the step), what the learn agent runs per click",
        "step: OnlineLearner.step on fixed examples; *_repeat: the same measurement again, after the autograd run (noise check)",
        f"event_batched: InteractionLearner.apply_many on {args.batch} events at a time (the learn agent's batches), time per event",
    ]
    return emit("update", config, figures, notes, as_json=args.json)


def _batched_events(
    cfg: ModelConfig, shared: SharedParams, catalogue: Catalogue, users: list[str], events: list[Interaction], batch: int
) -> list[float]:
    """Seconds per event of apply_many over the events, `batch` at a time (one value per event)."""
    interactions = InteractionLearner(OnlineLearner(cfg, shared, OnlineConfig()), catalogue, FeedbackWeights(), negatives=4)
    states = {u: UserState.new(cfg) for u in users}
    seconds: list[float] = []
    for start in range(0, len(events), batch):
        chunk = [(event, 0, start + k) for k, event in enumerate(events[start : start + batch])]
        t0 = time.perf_counter()
        interactions.apply_many(states, chunk)
        seconds += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
    return seconds[batch:]


def _examples(catalogue: Catalogue, count: int) -> Examples:
    rows = torch.arange(count)
    labels = torch.tensor([1.0] + [0.0] * (count - 1))
    weights = torch.tensor([1.0] + [0.5] * (count - 1))
    return Examples(catalogue.float_maps(rows), catalogue.item_bias[rows], labels, weights)
