"""Topic messages: validation with reason codes, and committed schemas that match the models."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mmrec.cli import main
from mmrec.feedback import EventKind
from mmrec.messages import SCHEMAS, DeadLetter, Interaction, InvalidMessage, MediaUpload, json_schema, parse

ROOT = Path(__file__).resolve().parents[1]


def interaction(**fields) -> bytes:
    base = {"event_id": "e1", "user_id": "u1", "media_id": "m1", "kind": "click", "timestamp": "2026-11-25T10:00:00Z"}
    return json.dumps({**base, **fields}).encode()


def test_valid_interaction_parses_with_unix_or_rfc3339_time():
    a = parse(Interaction, interaction())
    b = parse(Interaction, interaction(timestamp=a.timestamp.timestamp()))
    assert a.kind is EventKind.CLICK and a.timestamp == b.timestamp and a.weight == 1.0


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert parse(Interaction, interaction(added_later="x")).event_id == "e1"


@pytest.mark.parametrize(
    "raw,reason",
    [
        (None, "empty_value"),
        (b"\xff\xfe", "invalid_json"),
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_schema"),
        (interaction(kind="teleport"), "invalid_schema"),
        (interaction(kind="play"), "invalid_schema"),  # a play needs its watch fraction
        (interaction(kind="click", watch_fraction=0.5), "invalid_schema"),
        (interaction(kind="play", watch_fraction=1.5), "invalid_schema"),
        (interaction(timestamp="2026-11-25T10:00:00"), "invalid_schema"),  # no UTC offset: ambiguous
        (interaction(user_id=""), "invalid_schema"),
        (interaction(user_id="a\nb"), "invalid_schema"),
        (interaction(weight=0), "invalid_schema"),
        (json.dumps({"media_id": "m"}).encode(), "invalid_schema"),
    ],
)
def test_invalid_interactions_raise_with_a_reason(raw, reason):
    with pytest.raises(InvalidMessage) as info:
        parse(Interaction, raw)
    assert info.value.reason == reason and str(info.value)


def test_media_upload_requires_a_known_type():
    ok = {"media_id": "m1", "uri": "file:///x.jpg", "media_type": "image", "created_at": 0}
    assert parse(MediaUpload, json.dumps(ok).encode()).media_type == "image"
    with pytest.raises(InvalidMessage):
        parse(MediaUpload, json.dumps({**ok, "media_type": "audio"}).encode())


def test_dead_letter_keeps_the_original_bytes():
    letter = DeadLetter.of(topic="t", partition=1, offset=9, key=b"k", value=b"\x00v", reason="invalid_json", error="bad", worker="w1")
    back = json.loads(letter.to_json())
    assert base64.b64decode(back["value_b64"]) == b"\x00v" and back["reason"] == "invalid_json"


def test_committed_schema_files_are_current():
    for name, model in SCHEMAS.items():
        assert (ROOT / "schemas" / name).read_text() == json_schema(model), f"run `mmrec schemas` ({name})"
    assert main(["schemas", "--check", "--dir", str(ROOT / "schemas")]) == 0
