"""Property-based tests (hypothesis) over the bytes and fields of every topic a worker consumes:
uploads, interactions, wakeups, user updates and features. Whatever arrives, the agent keeps
running (a valid message sent after the hostile ones is still processed) and every message it
cannot use reaches the dead-letter topic with its original bytes and a reason.

Agents run through faust's `test_context()` (no broker); the dead-letter and output topics are
patched to record what is sent.
"""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from unittest.mock import AsyncMock, patch

from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrec.item_codec import CorruptRecord, decode_item, encode_item
from mmrec.messages import Interaction, InvalidMessage, MediaUpload, Trigger, parse
from mmrec.samples import sample_image
from mmrec.user_state import CorruptUserState, decode_user_state, encode_user_state
from tests.synthetic_items import make_item
from tests.test_agents import event, make_worker, version_of
from worker.service import Worker
from worker.user_updates import CorruptUserUpdate, UserUpdate, decode_user_update, encode_user_update

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
deep_nesting = st.integers(2_000, 60_000).map(lambda n: b"[" * n)
huge_number = st.integers(4_400, 6_000).map(lambda n: b"1" * n)
odd_texts = st.text(max_size=30) | st.sampled_from(["", " ", "\x00", "u\u0301", "\ud7ff", "a" * 300])
timestamps = st.sampled_from(["2026-11-26T00:00:00Z", "2026-11-26T00:00:00", "yesterday", 1_780_000_000, -1, 1e300, None])


def mutated(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid record truncated, with bytes overwritten, or with bytes appended."""
    cut = st.integers(0, len(valid)).map(lambda n: valid[:n])
    overwrite = st.tuples(st.integers(0, len(valid) - 1), st.binary(min_size=1, max_size=8)).map(
        lambda pair: valid[: pair[0]] + pair[1] + valid[pair[0] + len(pair[1]) :]
    )
    return cut | overwrite | st.binary(max_size=16).map(lambda tail: valid + tail)


def message_values(fields: st.SearchStrategy[dict]) -> st.SearchStrategy[bytes | None]:
    """Raw bytes, any JSON, pathological JSON, or objects shaped like the topic's messages."""
    as_json = json_values.map(lambda v: json.dumps(v).encode())
    shaped = fields.map(lambda d: json.dumps(d, default=str).encode())
    return st.none() | st.binary(max_size=120) | as_json | deep_nesting | huge_number | shaped


interaction_fields = st.fixed_dictionaries(
    {
        "event_id": odd_texts,
        "user_id": odd_texts,
        "media_id": st.sampled_from(["m0", "m1", "m5", "unknown"]) | odd_texts,
        "kind": st.sampled_from(["click", "like", "play", "skip", "impression", "purchase", ""]),
        "timestamp": timestamps,
    },
    optional={"watch_fraction": st.floats(allow_nan=True) | st.integers(), "weight": st.floats(allow_nan=True), "extra": json_values},
)

# --- helpers -------------------------------------------------------------------------------------


@contextmanager
def fresh_worker(**overrides: object) -> Iterator[Worker]:
    folder = Path(tempfile.mkdtemp(prefix="mmrec-hostile-"))
    worker = make_worker(folder, **overrides)
    try:
        yield worker
    finally:
        worker.runtime.close()
        shutil.rmtree(folder, ignore_errors=True)


def letters(dead: AsyncMock) -> list[dict]:
    return [json.loads(call.kwargs["value"]) for call in dead.call_args_list]


def originals(sent: list[dict]) -> Counter:
    """(key, value) bytes of dead letters, as a multiset."""
    decode = lambda b64: None if b64 is None else base64.b64decode(b64)  # noqa: E731
    return Counter((decode(letter.get("key_b64")), decode(letter.get("value_b64"))) for letter in sent)


async def until(condition, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the agent did not get through the messages"
        await asyncio.sleep(0.01)


def assert_reasons(sent: list[dict]) -> None:
    for letter in sent:
        assert letter["reason"] and letter["reason"].replace("_", "").isalnum(), letter
        assert letter["error"], letter


# --- interactions --------------------------------------------------------------------------------


def interaction_rejection(key: bytes | None, value: bytes | None) -> str | None:
    """The reason the learn agent must give, or None for a valid interaction."""
    try:
        interaction = parse(Interaction, value)
    except InvalidMessage as exc:
        return exc.reason
    return None if key == interaction.user_id.encode() else "key_mismatch"


@EXAMPLES
@given(st.lists(st.tuples(st.none() | st.binary(max_size=12) | st.just(b"u1"), message_values(interaction_fields)), min_size=1, max_size=8))
def test_interactions_agent_survives_any_message_and_dead_letters_each_invalid_one(messages):
    async def run() -> None:
        with fresh_worker() as worker, patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead, \
                patch.object(worker.topics.wakeups, "send", new=AsyncMock()):
            async with worker.app.agents["learn"].test_context() as agent:
                for key, value in messages:
                    await agent.put(key=key, value=value)
                await agent.put(key=b"sentinel", value=event("last", user="sentinel", media="m2"))
                await until(lambda: version_of(worker, b"sentinel") == 1)
            expected = {(k, v): interaction_rejection(k, v) for k, v in messages}
            sent = letters(dead)
            assert originals(sent) == Counter((k, v) for k, v in messages if expected[(k, v)] is not None)
            assert {letter["reason"] for letter in sent} <= set(expected.values())
            assert_reasons(sent)

    asyncio.run(run())


# --- wakeups -------------------------------------------------------------------------------------


@EXAMPLES
@given(st.lists(st.tuples(st.none() | st.binary(max_size=12) | st.just(b"u1"), message_values(st.fixed_dictionaries({"user_id": odd_texts | json_values}))), min_size=1, max_size=8))
def test_wakeups_agent_survives_any_message_and_dead_letters_each_invalid_one(messages):
    def valid(key: bytes | None, value: bytes | None) -> bool:
        try:
            data = json.loads(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and isinstance(data.get("user_id"), str) and key == data["user_id"].encode()

    async def run() -> None:
        with fresh_worker() as worker, patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead:
            async with worker.app.agents["wake"].test_context() as agent:
                for key, value in messages:
                    await agent.put(key=key, value=value)
                await agent.put(key=b"sentinel", value=b'{"user_id": "sentinel"}')
                invalid = Counter((k, v) for k, v in messages if not valid(k, v))
                await until(lambda: sum(invalid.values()) == dead.await_count)
                await agent.put(key=b"sentinel", value=b'{"user_id": "sentinel"}')  # still consuming
            sent = letters(dead)
            assert originals(sent) == invalid
            assert {letter["reason"] for letter in sent} <= {"invalid_wakeup", "key_mismatch"}
            assert_reasons(sent)

    asyncio.run(run())


# --- user updates (score role) -------------------------------------------------------------------


def valid_update(worker: Worker, user: str) -> bytes:
    state = encode_user_state(worker.runtime.initial_state(user), worker.runtime.cfg)
    return encode_user_update(UserUpdate(Trigger(kind="interaction", event_id="e1"), 1_780_000_000.0, True, state))


@EXAMPLES
@given(st.data())
def test_score_agent_survives_any_user_update_and_dead_letters_each_corrupt_one(data):
    async def run() -> None:
        with fresh_worker(role="score") as worker, patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead, \
                patch.object(worker.topics.recommendations, "send", new=AsyncMock()):
            good = valid_update(worker, "u1")
            values = st.none() | st.binary(max_size=200) | mutated(good) | st.just(good)
            messages = data.draw(st.lists(st.tuples(st.none() | st.just(b"") | st.just(b"\xff") | st.just(b"u1"), values), min_size=1, max_size=8))

            def corrupt(key: bytes | None, value: bytes | None) -> bool:
                try:
                    assert key
                    key.decode()
                    decode_user_state(decode_user_update(value or b"").state, worker.runtime.cfg)
                except (AssertionError, UnicodeDecodeError, CorruptUserUpdate, CorruptUserState):
                    return True
                return False

            async with worker.app.agents["score"].test_context() as agent:
                for key, value in messages:
                    await agent.put(key=key, value=value)
                invalid = Counter((k, v) for k, v in messages if corrupt(k, v))
                await until(lambda: sum(invalid.values()) == dead.await_count)
                await agent.put(key=b"sentinel", value=valid_update(worker, "sentinel"))
            sent = letters(dead)
            assert originals(sent) == invalid
            assert {letter["reason"] for letter in sent} <= {"corrupt_user_update"}
            assert_reasons(sent)

    asyncio.run(run())


# --- features (every worker's catalogue sync) ------------------------------------------------------


@EXAMPLES
@given(st.data())
def test_catalogue_sync_stores_or_rejects_every_features_record(data):
    with fresh_worker() as worker:
        version = worker.runtime.feature_version
        good = encode_item(make_item("fresh", seed=3, version=version))
        values = st.binary(max_size=300) | mutated(good) | st.just(good)
        drawn = data.draw(st.lists(st.tuples(st.sampled_from([b"fresh", b"other", b""]), values), min_size=1, max_size=6))
        records = [ConsumerRecord("features", 0, i, 0, 0, k, v, None, len(k), len(v), []) for i, (k, v) in enumerate(drawn)]

        def acceptable(key: bytes, value: bytes) -> bool:
            try:
                item = decode_item(value)
            except CorruptRecord:
                return False
            return key == item.media_id.encode() and all(tuple(m.shape) == s for m, s in zip(item.maps, worker.catalogue.shapes))

        _, rejected = worker.catalogue._store(records)
        assert sorted(r.offset for r, _, _ in rejected) == [r.offset for r in records if not acceptable(r.key, r.value)]
        assert all(reason in {"corrupt_features", "key_mismatch", "feature_shape"} and error for _, reason, error in rejected)


# --- uploads (extract role) ----------------------------------------------------------------------

MEDIA = Path(tempfile.mkdtemp(prefix="mmrec-hostile-media-"))
shutil.copy(sample_image("chelsea.png"), MEDIA / "cat.png")
(MEDIA / "truncated.png").write_bytes(sample_image("chelsea.png").read_bytes()[:900])
(MEDIA / "text.png").write_bytes(b"hello, not an image")
URIS = [
    (MEDIA / "cat.png").as_uri(), (MEDIA / "truncated.png").as_uri(), (MEDIA / "text.png").as_uri(), (MEDIA / "absent.png").as_uri(),
    "file:///etc/passwd", "../../etc/passwd", "http://127.0.0.1:1/a.png", "http://169.254.169.254/latest/meta-data",
    "https://10.0.0.1/a.jpg", "http://[::1]/a.png", "ftp://192.0.2.1/a.png", "gopher://x", "", "\x00",
]
upload_fields = st.fixed_dictionaries(
    {
        "media_id": odd_texts,
        "uri": st.sampled_from(URIS) | odd_texts,
        "media_type": st.sampled_from(["image", "video", "audio", ""]),
        "created_at": timestamps,
    },
    optional={"metadata": json_values},
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.none() | st.binary(max_size=8), message_values(upload_fields)), min_size=1, max_size=6))
def test_extraction_agent_publishes_or_dead_letters_every_upload(messages):
    async def run() -> None:
        with fresh_worker(role="extract", media_roots=(MEDIA,), allowed_uri_schemes=("file", "http", "https"), extract_batch_size=4) as worker, \
                patch.object(worker.topics.dead_letter, "send", new=AsyncMock()) as dead, \
                patch.object(worker.topics.features, "send", new=AsyncMock()) as published:
            sentinel = MediaUpload(media_id="sentinel", uri=(MEDIA / "cat.png").as_uri(), media_type="image", created_at=datetime.now(timezone.utc))
            async with worker.app.agents["extract"].test_context() as agent:
                for key, value in messages:
                    await agent.put(key=key, value=value)
                await agent.put(key=b"sentinel", value=sentinel.to_json())
                await until(lambda: dead.await_count + published.await_count == len(messages) + 1, timeout=120)
            sent = letters(dead)
            assert b"sentinel" in [call.kwargs["key"] for call in published.call_args_list], [(l["reason"], l["error"]) for l in sent]
            unparsable = Counter()
            for key, value in messages:
                try:
                    parse(MediaUpload, value)
                except InvalidMessage:
                    unparsable[(key, value)] += 1
            assert originals(sent) >= unparsable  # the rest failed to fetch or decode, or were published
            assert_reasons(sent)

    asyncio.run(run())
