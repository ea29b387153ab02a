"""The JSON messages on mmrec's topics, as versioned, validated models.

The JSON Schemas in `schemas/` are generated from these models (`mmrec schemas --write`); a test keeps
them current. Producers in any language follow those files. Timestamps are accepted as RFC 3339
strings with a UTC offset or as unix seconds, and written as RFC 3339 UTC strings.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mmrec.feedback import EventKind

Identifier = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
MetadataValue = Union[str, int, float, bool, None]


class Message(BaseModel):
    """Unknown fields are ignored (a producer may add fields without breaking consumers)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1] = 1

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class MediaUpload(Message):
    """`media.uploads`, key: media_id. A new image or video to extract features from."""

    media_id: Identifier
    uri: Annotated[str, Field(min_length=1, max_length=4096)] = Field(
        description="A file path (file:// or absolute) or an http(s) URL; allowed schemes and hosts are settings."
    )
    media_type: Literal["image", "video"]
    created_at: AwareDatetime
    metadata: dict[Annotated[str, Field(max_length=128)], MetadataValue] = Field(default_factory=dict, max_length=64)


class Interaction(Message):
    """`user.interactions`, key: user_id. One thing a user did with one item."""

    event_id: Identifier = Field(description="Unique per event; re-sent events with the same id are applied once.")
    user_id: Identifier
    media_id: Identifier
    kind: EventKind
    timestamp: AwareDatetime
    watch_fraction: float | None = Field(None, ge=0.0, le=1.0, description="Required for kind 'play'.")
    weight: float = Field(1.0, gt=0.0, le=100.0, description="Multiplies the kind's loss weight.")

    @model_validator(mode="after")
    def _play_needs_fraction(self) -> Interaction:
        if (self.kind is EventKind.PLAY) != (self.watch_fraction is not None):
            raise ValueError("watch_fraction is required for kind 'play' and only for it")
        return self


class RankedItem(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    media_id: Identifier
    score: float


class Trigger(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    kind: Literal["interaction", "new_media"]
    event_id: Identifier | None = None
    media_id: Identifier | None = None


class Recommendations(Message):
    """`user.recommendations`, key: user_id. A user's refreshed top-K, best first."""

    user_id: Identifier
    items: list[RankedItem]
    model_version: str
    generated_at: AwareDatetime
    trigger: Trigger


class DeadLetter(Message):
    """The dead-letter topic, key: the original key. A message that could not be processed."""

    source_topic: str
    partition: int
    offset: int
    key_b64: str | None = Field(description="The original key bytes, base64; absent if there was none.")
    value_b64: str | None = Field(description="The original value bytes, base64; absent if there was none.")
    reason: str = Field(description="A stable machine-readable code, e.g. 'invalid_json', 'media_corrupt'.")
    error: str = Field(description="A readable explanation.")
    failed_at: AwareDatetime
    worker: str = Field(description="Client id of the worker that gave up on the message.")

    @classmethod
    def of(
        cls, *, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, reason: str, error: str, worker: str
    ) -> DeadLetter:
        encode = lambda raw: None if raw is None else base64.b64encode(raw).decode()  # noqa: E731
        return cls(
            source_topic=topic,
            partition=partition,
            offset=offset,
            key_b64=encode(key),
            value_b64=encode(value),
            reason=reason,
            error=error[:2000],
            failed_at=datetime.now(timezone.utc),
            worker=worker,
        )


class InvalidMessage(ValueError):
    """A message that does not follow its schema; `reason` is the dead-letter code."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


def parse(model: type[Message], raw: bytes | None) -> Message:
    """Validate raw bytes against a message model; raises InvalidMessage with a reason code."""
    if raw is None:
        raise InvalidMessage("empty_value", "message has no value")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, a 5000-digit number, nesting too deep
        raise InvalidMessage("invalid_json", f"not JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("invalid_schema", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidMessage("invalid_schema", f"{model.__name__}: {details}") from None


SCHEMAS: dict[str, type[Message]] = {
    "media-upload.v1.json": MediaUpload,
    "interaction.v1.json": Interaction,
    "recommendations.v1.json": Recommendations,
    "dead-letter.v1.json": DeadLetter,
}


def json_schema(model: type[Message]) -> str:
    """The JSON Schema document of one message model, as committed under schemas/."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = next(name for name, known in SCHEMAS.items() if known is model)
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
