"""The visual-taste benchmark: a seeded simulator of users whose taste depends on local visual patterns.

Items are composites of real images: 1-4 Fashion-MNIST garments of distinct classes, each a random
instance of its class tinted in one of four colour families (red, yellow, green, blue), at a random
position and scale, on a background that is a crop of one of scikit-image's brick, grass or gravel
textures (tinted) or a plain colour. A (class, colour) pair on the canvas is a local pattern, e.g.
"a red sneaker". Users and what they do:

    v_ui = max over garments g on i of a_u[class(g)] * s_u[colour(g)] + tau_u[background(i)]
    z_ui = base + v_ui + pop_i + eps_ui + b_u                        P(engage | shown) = sigmoid(z_ui)

a_u (10,) sparse affinities: 1-2 liked classes with a_uc ~ U(lo, hi), 0 for the others; s_u (4,)
1 for the user's favourite colour family and off_colour for the others, so the response is
max-like, "contains something I like", and the best is a liked garment in the favourite colour
(class and colour must be seen together, on the same garment); tau_u (4,) a mild background
preference; pop_i item appeal; eps_ui persistent idiosyncratic noise; b_u user bias.

Time runs over `days` days with exactly events_per_user * users / days exposures a day (so the 0.7
and 0.8 event-time quantiles that `mmrec evaluate` splits at fall on the first instants of days
0.7 * days and 0.8 * days). Each exposure draws a user by activity (log-normal) and one of the items
released so far, from a mixture that stands for the platform that logged the data:
    mix_targeted  its feed, which knows the users' visual tastes: P(i) ~ exp(targeting * v_ui)
    mix_popular   trending: P(i) ~ exp(pop_i)
    mix_fresh     new arrivals: uniform over the items released in the last fresh_days days
    the rest      uniform
An engaged exposure is a like, a share or a click; any other a skip, a dislike or a plain impression.
`initial_fraction` of the items are released on day 0, `cold_fraction` on the days of the test period
(first seen there: the cold-start items), the rest in between.

Output folder: media/<media_id>.png, interactions.csv, items.csv (true attributes), ground_truth.npz
and ground_truth.json (every parameter above: enough to recompute z and the exposure process),
README.md (see readme()).
"""
from __future__ import annotations

import colorsys
import csv
import io
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmrec.datasets.fashion_mnist import CLASSES, DEFAULT_DIR, load_fashion_mnist
from mmrec.samples import sample_image

BACKGROUNDS = ("brick", "grass", "gravel", "plain")
COLOURS = ("red", "yellow", "green", "blue")
_HUES = ((-0.04, 0.04), (0.11, 0.17), (0.28, 0.40), (0.58, 0.68))  # HSV hue range of each colour family
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
DAY = 86_400.0
# Independent random streams, so that e.g. a different user count leaves the images unchanged.
_ITEMS, _IMAGES, _USERS, _NOISE, _EVENTS = range(5)


@dataclass(frozen=True)
class VisualTasteConfig:
    users: int = 1000
    items: int = 3000
    days: int = 100
    events_per_user: int = 200  # on average; exposures a day = events_per_user * users / days
    seed: int = 0
    canvas: int = 128  # image side, pixels
    validation_start: float = 0.7  # fraction of the days before the validation period
    test_start: float = 0.8  # fraction of the days before the test period
    initial_fraction: float = 0.3  # items released on day 0
    cold_fraction: float = 0.2  # items released during the test period
    liked_classes: tuple[float, ...] = (0.7, 0.3)  # P(a user likes 1, 2, ... classes)
    affinity_low: float = 1.0
    affinity_high: float = 3.5
    off_colour: float = 0.35  # s_u of the colour families other than the favourite
    background_sd: float = 0.5  # tau
    popularity_sd: float = 0.6  # pop
    noise_sd: float = 0.5  # eps
    user_bias_sd: float = 0.4  # b_u
    activity_sd: float = 0.8  # log-normal user activity
    base_logit: float = -3.0
    mix_targeted: float = 0.5
    targeting: float = 2.5
    mix_popular: float = 0.2
    mix_fresh: float = 0.15
    fresh_days: int = 7
    garments: tuple[float, ...] = (0.5, 0.3, 0.15, 0.05)  # P(1, 2, 3, 4 garments on an item)
    garment_scale: tuple[float, float] = (0.3, 0.5)  # garment side as a fraction of the canvas

    def __post_init__(self) -> None:
        for name in ("validation_start", "test_start"):
            boundary = getattr(self, name) * self.days
            if abs(boundary - round(boundary)) > 1e-9 or not 0 < boundary < self.days:
                raise ValueError(f"{name} * days must be a whole day inside (0, days), got {boundary}")
        if self.validation_start >= self.test_start:
            raise ValueError("validation_start must come before test_start")
        if (self.events_per_user * self.users) % self.days:
            raise ValueError("events_per_user * users must be a multiple of days (equal exposures a day)")
        if self.initial_fraction + self.cold_fraction > 1 or min(self.users, self.items) < 2:
            raise ValueError("need initial_fraction + cold_fraction <= 1 and at least 2 users and items")
        if self.mix_targeted + self.mix_popular + self.mix_fresh > 1:
            raise ValueError("mix_targeted + mix_popular + mix_fresh must be at most 1")

    @property
    def test_day(self) -> int:
        return round(self.test_start * self.days)

    @property
    def end_time(self) -> float:
        """Unix seconds at the end of the last simulated day."""
        return EPOCH + self.days * DAY

    @classmethod
    def from_json(cls, values: dict) -> VisualTasteConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


TINY = VisualTasteConfig(users=40, items=120, days=20, events_per_user=40, canvas=64, fresh_days=2)


@dataclass(frozen=True, eq=False)
class Simulation:
    """Every parameter of one simulated world: what ground_truth.npz stores.

    affinity (U, C), colour_preference (U, K), background_preference (U, B), user_bias (U,),
    activity (U,) summing to 1, colour (I, C) int8: the colour family of the item's garment of
    class c, -1 without one; background (I,), release_day (I,), popularity (I,), noise (U, I) float16
    """

    config: VisualTasteConfig
    user_ids: list[str]
    item_ids: list[str]
    affinity: np.ndarray
    colour_preference: np.ndarray
    background_preference: np.ndarray
    user_bias: np.ndarray
    activity: np.ndarray
    colour: np.ndarray
    background: np.ndarray
    release_day: np.ndarray
    popularity: np.ndarray
    noise: np.ndarray

    _ARRAYS = ("affinity", "colour_preference", "background_preference", "user_bias", "activity", "colour",
               "background", "release_day", "popularity", "noise")

    @classmethod
    def draw(cls, config: VisualTasteConfig) -> Simulation:
        """The world of a configuration and seed (images and events are drawn from it later)."""
        rng = np.random.default_rng([config.seed, _ITEMS])
        n_initial = round(config.initial_fraction * config.items)
        n_cold = round(config.cold_fraction * config.items)
        release = np.concatenate([
            np.zeros(n_initial, dtype=np.int64),
            rng.integers(1, config.test_day, config.items - n_initial - n_cold),
            rng.integers(config.test_day, config.days, n_cold),
        ])
        rng.shuffle(release)
        colour = np.full((config.items, len(CLASSES)), -1, dtype=np.int8)
        for i, n in enumerate(rng.choice(len(config.garments), config.items, p=config.garments) + 1):
            colour[i, rng.choice(len(CLASSES), n, replace=False)] = rng.integers(0, len(COLOURS), n)
        background = rng.integers(0, len(BACKGROUNDS), config.items)
        popularity = rng.normal(0, config.popularity_sd, config.items).astype(np.float32)
        rng = np.random.default_rng([config.seed, _USERS])
        affinity = np.zeros((config.users, len(CLASSES)), dtype=np.float32)
        for u in range(config.users):
            liked = rng.choice(len(CLASSES), rng.choice(len(config.liked_classes), p=config.liked_classes) + 1, replace=False)
            affinity[u, liked] = rng.uniform(config.affinity_low, config.affinity_high, len(liked))
        colours = np.full((config.users, len(COLOURS)), config.off_colour, dtype=np.float32)
        colours[np.arange(config.users), rng.integers(0, len(COLOURS), config.users)] = 1.0
        preference = rng.normal(0, config.background_sd, (config.users, len(BACKGROUNDS))).astype(np.float32)
        bias = rng.normal(0, config.user_bias_sd, config.users).astype(np.float32)
        activity = rng.lognormal(0, config.activity_sd, config.users)
        noise = np.random.default_rng([config.seed, _NOISE]).normal(0, config.noise_sd, (config.users, config.items))
        return cls(
            config=config,
            user_ids=[f"u{u:0{len(str(config.users))}d}" for u in range(config.users)],
            item_ids=[f"v{i:0{len(str(config.items))}d}" for i in range(config.items)],
            affinity=affinity, colour_preference=colours, background_preference=preference, user_bias=bias, activity=activity / activity.sum(),
            colour=colour, background=background, release_day=release, popularity=popularity,
            noise=noise.astype(np.float16),
        )

    @classmethod
    def load(cls, folder: Path) -> Simulation:
        """From a benchmark folder's ground_truth.json and ground_truth.npz."""
        meta = json.loads((folder / "ground_truth.json").read_text())
        with np.load(folder / "ground_truth.npz") as z:
            arrays = {name: z[name] for name in cls._ARRAYS}
            ids = {"user_ids": [str(u) for u in z["user_ids"]], "item_ids": [str(i) for i in z["item_ids"]]}
        return cls(config=VisualTasteConfig.from_json(meta["config"]), **ids, **arrays)

    def save(self, folder: Path) -> None:
        np.savez_compressed(folder / "ground_truth.npz", user_ids=np.array(self.user_ids), item_ids=np.array(self.item_ids),
                            **{name: getattr(self, name) for name in self._ARRAYS})
        meta = {"generator": "mmrec visual-taste", "config": asdict(self.config), "classes": list(CLASSES),
                "colours": list(COLOURS), "backgrounds": list(BACKGROUNDS), "epoch": EPOCH, "day_seconds": DAY}
        (folder / "ground_truth.json").write_text(json.dumps(meta, indent=2) + "\n")

    @property
    def classes(self) -> np.ndarray:
        """(I, C) bool: which garment classes each item shows."""
        return self.colour >= 0

    def taste(self, users: np.ndarray | slice = slice(None), items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """v (U, I) float32: max over the item's garments of affinity x colour preference (0 if none
        is liked) + background preference."""
        affinity, colour, liking = self.affinity[users], self.colour[items], self.colour_preference[users]
        v = np.zeros((affinity.shape[0], colour.shape[0]), dtype=np.float32)
        for c in range(colour.shape[1]):  # every term >= 0: the max over the garments present
            term = affinity[:, c : c + 1] * liking[:, np.maximum(colour[:, c], 0)] * (colour[:, c] >= 0)
            np.maximum(v, term, out=v)
        return v + self.background_preference[users][:, self.background[items]]

    def logits(self, users: np.ndarray | slice = slice(None), items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """z (U, I) float32: base + v + pop + eps + b."""
        noise = self.noise[users][:, items].astype(np.float32)
        return (self.config.base_logit + self.taste(users, items) + self.popularity[items][None, :] + noise
                + self.user_bias[users][:, None]).astype(np.float32)

    @cached_property
    def item_shares(self) -> np.ndarray:
        """(I, D) float64: P(an exposure on day d is not the feed's and shows item i)."""
        c = self.config
        shares = np.zeros((c.items, c.days))
        appeal = np.exp(self.popularity.astype(np.float64))
        for d in range(c.days):
            released = self.release_day <= d
            fresh = released & (self.release_day > d - c.fresh_days)
            uniform = 1.0 - c.mix_targeted - c.mix_popular - (c.mix_fresh if fresh.any() else 0.0)
            shares[:, d] = c.mix_popular * appeal * released / appeal[released].sum() + uniform * released / released.sum()
            if fresh.any():
                shares[:, d] += c.mix_fresh * fresh / fresh.sum()
        return shares

    def feed_weights(self, users: np.ndarray | slice = slice(None), items: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(U, I) float64 exp(targeting * v): the feed's unnormalised preference."""
        return np.exp(self.config.targeting * self.taste(users, items).astype(np.float64))

    @cached_property
    def feed_normaliser(self) -> np.ndarray:
        """(U, D): sum of the feed weights over the items released by day d."""
        days = np.zeros((self.config.items, self.config.days))
        days[np.arange(self.config.items), self.release_day] = 1.0
        return np.cumsum(self.feed_weights() @ days, axis=1)

    def expected_exposures(self, users: np.ndarray, items: np.ndarray, start: float, end: float) -> np.ndarray:
        """(U, I): expected number of times one exposure slot per day, over [start, end), shows item i to
        user u (each day weighted by the part of it inside the interval)."""
        edges = EPOCH + DAY * np.arange(self.config.days + 1)
        overlap = np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0, None) / DAY  # (D,)
        untargeted = self.item_shares[items] @ overlap  # (I,)
        share = np.cumsum((overlap / self.feed_normaliser[users])[:, ::-1], axis=1)[:, ::-1]  # (U, D): sum over days >= d
        targeted = self.config.mix_targeted * self.feed_weights(users, items) * share[:, self.release_day[items]]
        return targeted + untargeted[None, :]


def generate(out: Path, config: VisualTasteConfig, fashion_mnist: Path = DEFAULT_DIR) -> Simulation:
    """Write the benchmark folder (module docstring). Same config and seed -> same bytes."""
    images, labels = load_fashion_mnist(fashion_mnist)
    (out / "media").mkdir(parents=True, exist_ok=True)
    sim = Simulation.draw(config)
    _write_media(out / "media", sim, images, labels)
    _write_interactions(out / "interactions.csv", sim)
    _write_items(out / "items.csv", sim)
    sim.save(out)
    (out / "README.md").write_text(readme(config))
    return sim


def _write_media(folder: Path, sim: Simulation, images: np.ndarray, labels: np.ndarray) -> None:
    config = sim.config
    rng = np.random.default_rng([config.seed, _IMAGES])
    by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
    textures = {name: np.asarray(Image.open(sample_image(f"{name}.png")).convert("L"), dtype=np.float32) / 255
                for name in BACKGROUNDS[:-1]}
    for i in tqdm(range(config.items), desc="visual-taste images", unit="img", leave=False):
        canvas = _background(rng, config.canvas, BACKGROUNDS[sim.background[i]], textures)
        boxes: list[tuple[int, int, int]] = []
        for c in rng.permutation(np.flatnonzero(sim.classes[i])):
            garment = images[rng.choice(by_class[c])]
            _paste(canvas, garment, _place(rng, config, boxes), _family_colour(rng, int(sim.colour[i, c])))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        (folder / f"{sim.item_ids[i]}.png").write_bytes(buffer.getvalue())


def _background(rng: np.random.Generator, size: int, kind: str, textures: dict[str, np.ndarray]) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: a tinted random crop of a texture, or a plain colour."""
    if kind == "plain":
        return np.broadcast_to(_colour(rng, 0.0, 0.6, 0.25, 0.8), (size, size, 3)).copy()
    texture = textures[kind]
    side = int(rng.integers(size, min(2 * size, texture.shape[0]) + 1))
    y, x = rng.integers(0, texture.shape[0] - side + 1, 2)
    crop = Image.fromarray((texture[y : y + side, x : x + side] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return (np.asarray(crop, dtype=np.float32) / 255)[:, :, None] * _colour(rng, 0.0, 0.5, 0.6, 1.0)


def _family_colour(rng: np.random.Generator, family: int) -> np.ndarray:
    """A saturated, bright RGB colour (3,) from a colour family's hue range."""
    hue = rng.uniform(*_HUES[family]) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.0)), dtype=np.float32)


def _colour(rng: np.random.Generator, s_lo: float, s_hi: float, v_lo: float, v_hi: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(s_lo, s_hi), rng.uniform(v_lo, v_hi)), dtype=np.float32)


def _place(rng: np.random.Generator, config: VisualTasteConfig, boxes: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(y, x, side) of a new garment overlapping earlier ones by at most a quarter (best of 30 tries)."""
    best, best_overlap = (0, 0, 0), np.inf
    for _ in range(30):
        side = int(rng.uniform(*config.garment_scale) * config.canvas)
        y, x = (int(v) for v in rng.integers(0, config.canvas - side + 1, 2))
        overlap = max((_intersection((y, x, side), b) / min(side, b[2]) ** 2 for b in boxes), default=0.0)
        if overlap < best_overlap:
            best, best_overlap = (y, x, side), overlap
        if overlap <= 0.25:
            break
    boxes.append(best)
    return best


def _intersection(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    h = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    w = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return float(max(h, 0) * max(w, 0))


def _paste(canvas: np.ndarray, garment: np.ndarray, box: tuple[int, int, int], colour: np.ndarray) -> None:
    """Alpha-composite a white-on-black garment (28, 28) uint8, tinted, into canvas at box."""
    y, x, side = box
    g = np.asarray(Image.fromarray(garment).resize((side, side), Image.BILINEAR), dtype=np.float32)[:, :, None] / 255
    alpha = np.clip(2 * g, 0, 1)
    region = canvas[y : y + side, x : x + side]
    region[:] = (1 - alpha) * region + alpha * colour * (0.35 + 0.65 * g)


def _write_interactions(path: Path, sim: Simulation) -> None:
    """Exposures day by day -> events (module docstring), written in time order."""
    config = sim.config
    rng = np.random.default_rng([config.seed, _EVENTS])
    per_day = config.events_per_user * config.users // config.days
    shares = sim.item_shares
    feed = sim.feed_weights()
    logits = sim.logits()
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user_id", "media_id", "event", "timestamp"])
        for d in tqdm(range(config.days), desc="visual-taste events", unit="day", leave=False):
            users = rng.choice(config.users, per_day, p=sim.activity)
            from_feed = rng.random(per_day) < config.mix_targeted
            shown = np.empty(per_day, dtype=np.int64)
            shown[~from_feed] = rng.choice(config.items, int((~from_feed).sum()), p=shares[:, d] / shares[:, d].sum())
            cumulative = np.cumsum(feed[users[from_feed]] * (sim.release_day <= d), axis=1)
            draws = rng.random(int(from_feed.sum())) * cumulative[:, -1]
            shown[from_feed] = (cumulative < draws[:, None]).sum(axis=1)
            engaged = rng.random(per_day) < 1 / (1 + np.exp(-logits[users, shown]))
            flavour = rng.random(per_day)
            seconds = np.sort(rng.integers(0, int(DAY), per_day))
            for u, i, e, r, s in zip(users, shown, engaged, flavour, seconds):
                kind = ("like" if r < 0.25 else "share" if r < 0.3 else "click") if e else (
                    "skip" if r < 0.4 else "dislike" if r < 0.45 else "impression")
                when = datetime.fromtimestamp(EPOCH + d * DAY + int(s), tz=timezone.utc).isoformat()
                writer.writerow([sim.user_ids[u], sim.item_ids[i], kind, when])


def _write_items(path: Path, sim: Simulation) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["media_id", "release_time", "release_day", "cold", "background", "garments", "patterns",
                         *(f"colour_{c}" for c in CLASSES)])
        for i, media_id in enumerate(sim.item_ids):
            present = np.flatnonzero(sim.classes[i])
            day = int(sim.release_day[i])
            release = datetime.fromtimestamp(EPOCH + day * DAY, tz=timezone.utc).isoformat()
            patterns = ";".join(f"{COLOURS[sim.colour[i, c]]} {CLASSES[c]}" for c in present)
            colours = [COLOURS[k] if k >= 0 else "" for k in sim.colour[i]]
            writer.writerow([media_id, release, day, int(day >= sim.config.test_day), BACKGROUNDS[sim.background[i]],
                             len(present), patterns, *colours])


def true_attributes(folder: Path) -> tuple[list[str], list[str], np.ndarray]:
    """From items.csv: (media ids, attribute names, (I, A) float32) with A = 40 flags "<colour> <class>"
    (which local patterns the item shows) and a one-hot of the 4 backgrounds: exactly what drives the
    simulated tastes."""
    names = [f"{k} {c}" for c in CLASSES for k in COLOURS] + [f"background {b}" for b in BACKGROUNDS]
    ids, rows = [], []
    with (folder / "items.csv").open(newline="") as f:
        for record in csv.DictReader(f):
            ids.append(record["media_id"])
            patterns = [float(record[f"colour_{c}"] == k) for c in CLASSES for k in COLOURS]
            rows.append(patterns + [float(record["background"] == b) for b in BACKGROUNDS])
    return ids, names, np.asarray(rows, dtype=np.float32)


def readme(config: VisualTasteConfig) -> str:
    """The README.md written into the benchmark folder."""
    first_test = datetime.fromtimestamp(EPOCH + config.test_day * DAY, tz=timezone.utc).isoformat()
    return f"""# visual-taste benchmark (mmrec)

Generated by `mmrec dataset make visual-taste` with the configuration in `ground_truth.json`
(seed {config.seed}: {config.users} users, {config.items} items, {config.days} days, on average
{config.events_per_user} events per user). Same configuration -> same files. Documentation:
`docs/visual-taste.md` in the mmrec repository.

Images ({config.canvas} px PNG): 1-4 Fashion-MNIST garments of distinct classes, each tinted in a colour
family (red, yellow, green, blue), at a random position and scale, on a scikit-image texture (brick,
grass, gravel) or a plain background.

When user u is shown item i, they engage with probability sigmoid(z_ui):
    v_ui = max over the garments g on the item of affinity[u, class(g)] * colour_preference[u, colour(g)]
           + background_preference[u, background(i)]
    z_ui = {config.base_logit} + v_ui + popularity[i] + noise[u, i] + user_bias[u]
1-{len(config.liked_classes)} liked classes per user (P = {config.liked_classes}), affinity ~ U({config.affinity_low}, {config.affinity_high}) for those,
0 otherwise; colour_preference 1 for the user's favourite family, {config.off_colour} for the others.
Exposures ({config.events_per_user * config.users // config.days} a day) come from the platform's feed ({config.mix_targeted:.0%}, P(i) ~ exp({config.targeting} * v_ui)),
trending items ({config.mix_popular:.0%}, P(i) ~ exp(popularity)), new arrivals ({config.mix_fresh:.0%}, released in the last
{config.fresh_days} days) and uniformly from the items released so far (the rest).

Files:
- `media/<media_id>.png`: the items.
- `interactions.csv`: user_id, media_id, event (click, like, share = engaged; skip, dislike,
  impression = not), timestamp (ISO-8601, UTC); the same number of events every day.
- `items.csv`: true attributes: release_time, release_day, cold (1 = released on or after
  {first_test}, in the test period), background, garments, patterns ("red sneaker;blue bag"),
  colour_<class> (the colour family of the item's garment of that class, empty without one).
- `ground_truth.npz`: user_ids, item_ids, affinity (U, 10), colour_preference (U, 4),
  background_preference (U, 4), user_bias (U,), activity (U,), colour (I, 10) (family index, -1 =
  no garment of that class), background (I,), release_day (I,), popularity (I,), noise (U, I) float16.
- `ground_truth.json`: the configuration (mixture, targeting, base logit, ...), class and background
  names, the epoch of day 0.
"""
