"""item_codec: bit-exact round trip, compact size, and CorruptRecord for anything else."""
from __future__ import annotations

import json
import pickle
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import mmrec.item_codec as codec
from mmrec.item_codec import FORMAT, CorruptRecord, decode_item, encode_item
from tests.synthetic_items import make_item, same_item


def _parts(record: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    (n,) = struct.unpack_from("<Q", record)
    return st_load(record), json.loads(record[8 : 8 + n])["__metadata__"]


def _forge(arrays: dict[str, np.ndarray], meta: dict[str, str], fix_crc: bool = True) -> bytes:
    """A record with chosen tensors and metadata (CRC recomputed, so other checks are reached)."""
    meta = dict(meta)
    if fix_crc:
        crc = 0
        for name in sorted(arrays):  # layer0..layer9: name order is layer order
            crc = zlib.crc32(np.ascontiguousarray(arrays[name]), crc)
        meta["crc32"] = f"{crc:08x}"
    return st_save(arrays, meta)


def test_round_trip_is_bit_exact() -> None:
    item = make_item("img/ünïcode 1", seed=3)
    special = item.maps[0].clone()
    special.view(-1)[:4] = torch.tensor([-0.0, 65504.0, 6e-8, -6e-5], dtype=torch.float16)  # -0, max, subnormals
    item = replace(item, maps=(special, *item.maps[1:]), extra={"k": "v", "ü": "ß", "json": '{"a": [1]}'})
    back = decode_item(encode_item(item))
    assert same_item(back, item)
    assert all(m.dtype == torch.float16 and m.is_contiguous() for m in back.maps)


def test_round_trip_video_odd_shapes_and_one_layer() -> None:
    video = make_item("v", seed=1, media_type="video", shapes=((4, 3, 5), (4, 1, 1)))
    assert same_item(decode_item(encode_item(video)), video)
    one = make_item("one", shapes=((2, 2, 2),))
    assert same_item(decode_item(encode_item(one)), one)


def test_default_record_size_is_fp16_payload_plus_small_header() -> None:
    item = make_item("m0000001")
    payload = 2 * 8 * (14 * 14 + 14 * 14 + 7 * 7)
    assert item.nbytes == payload == 7056
    record = encode_item(item)
    assert payload < len(record) <= payload + 600  # header: metadata + 3 tensor entries


def test_decoded_maps_do_not_alias_the_record() -> None:
    record = bytearray(encode_item(make_item("a")))
    back = decode_item(record)
    before = back.maps[0].clone()
    record[-100:] = b"\x00" * 100
    assert torch.equal(back.maps[0], before)


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 9, 50, 200, 400, 600, 1000, 4000, -2, -1])
def test_truncated_record_raises(cut: int) -> None:
    record = encode_item(make_item("a"))
    with pytest.raises(CorruptRecord):
        decode_item(record[:cut])


def test_every_prefix_and_extension_raises() -> None:
    record = encode_item(make_item("a", shapes=((1, 2, 2),)))
    for cut in range(len(record)):
        with pytest.raises(CorruptRecord):
            decode_item(record[:cut])
    with pytest.raises(CorruptRecord):
        decode_item(record + b"\x00\x00")


def test_flipped_payload_bit_fails_crc() -> None:
    record = bytearray(encode_item(make_item("a")))
    record[-3000] ^= 0x01
    with pytest.raises(CorruptRecord, match="CRC"):
        decode_item(bytes(record))


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"\x00" * 64,
        b"\xff" * 8 + b"{}",
        json.dumps({"media_id": "a"}).encode(),
        pickle.dumps({"media_id": "a", "maps": [1, 2, 3]}),
        bytes(range(256)) * 30,
    ],
    ids=["empty", "zeros", "huge-header", "json", "pickle", "noise"],
)
def test_foreign_bytes_raise(blob: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode_item(blob)


def test_foreign_safetensors_raise() -> None:
    weights = st_save({"conv.weight": np.zeros((8, 3, 3, 3), np.float32)})
    with pytest.raises(CorruptRecord, match="format tag None"):
        decode_item(weights)
    arrays, meta = _parts(encode_item(make_item("a")))
    with pytest.raises(CorruptRecord, match="format tag"):
        decode_item(_forge(arrays, {**meta, "format": "mmrec.item/999"}))


def test_decode_rejects_not_a_bytes_object() -> None:
    with pytest.raises(CorruptRecord):
        decode_item("not bytes")  # type: ignore[arg-type]


def _mutations() -> dict[str, tuple[dict[str, np.ndarray], dict[str, str], str]]:
    arrays, meta = _parts(encode_item(make_item("a")))
    drop = dict(meta)
    del drop["created_at"]
    return {
        "missing-key": (arrays, drop, r"missing \['created_at'\]"),
        "unknown-key": (arrays, {**meta, "colour": "red"}, r"unexpected \['colour'\]"),
        "fp32-maps": ({k: v.astype(np.float32) for k, v in arrays.items()}, meta, r"float16"),
        "gap-in-layers": ({"layer0": arrays["layer0"], "layer2": arrays["layer2"]}, meta, r"layer0..layerN-1"),
        "foreign-tensor-name": ({**arrays, "bias": arrays["layer2"]}, meta, r"layer0..layerN-1"),
        "channel-mismatch": ({**arrays, "layer2": arrays["layer2"][:4]}, meta, r"channels"),
        "not-3d": ({**arrays, "layer1": arrays["layer1"].reshape(8, 196)}, meta, r"\(d, H, W\)"),
        "nan": ({**arrays, "layer0": np.full_like(arrays["layer0"], np.nan)}, meta, r"NaN"),
        "inf": ({**arrays, "layer1": np.full_like(arrays["layer1"], np.inf)}, meta, r"infinite"),
        "media-type": (arrays, {**meta, "media_type": "audio"}, r"media_type"),
        "empty-id": (arrays, {**meta, "media_id": ""}, r"media_id"),
        "empty-projection": (arrays, {**meta, "projection": ""}, r"version"),
        "frames-zero": (arrays, {**meta, "frames": "0"}, r"frames"),
        "frames-text": (arrays, {**meta, "frames": "eight"}, r"metadata value"),
        "created-nan": (arrays, {**meta, "created_at": "nan"}, r"created_at"),
        "created-text": (arrays, {**meta, "created_at": "yesterday"}, r"metadata value"),
        "extra-not-json": (arrays, {**meta, "extra": "{oops"}, r"metadata value"),
        "extra-not-strings": (arrays, {**meta, "extra": '{"a": 1}'}, r"extra"),
        "extra-list": (arrays, {**meta, "extra": "[]"}, r"extra"),
    }


@pytest.mark.parametrize("case", sorted(_mutations()))
def test_inconsistent_record_raises(case: str) -> None:
    arrays, meta, match = _mutations()[case]
    with pytest.raises(CorruptRecord, match=match):
        decode_item(_forge(arrays, meta))


def test_forged_record_passes_when_unchanged() -> None:
    """The forging helper itself yields a valid record, so the failures above are the mutations'."""
    item = make_item("a")
    assert same_item(decode_item(_forge(*_parts(encode_item(item)))), item)


def test_corrupt_record_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match="shorter than its 8-byte length prefix"):
        decode_item(b"abc")


@pytest.mark.parametrize(
    "change",
    [
        {"maps": (torch.zeros(8, 4, 4),)},
        {"maps": (torch.full((8, 4, 4), float("nan"), dtype=torch.float16),)},
        {"maps": ()},
        {"maps": (torch.zeros(8, 4, 4, dtype=torch.float16), torch.zeros(4, 2, 2, dtype=torch.float16))},
        {"media_id": ""},
        {"media_type": "gif"},
        {"frames": 0},
        {"created_at": float("inf")},
        {"extra": {"n": 1}},
    ],
    ids=["fp32", "nan", "no-maps", "channels", "empty-id", "media-type", "frames", "created-inf", "extra"],
)
def test_encode_rejects_invalid_items(change: dict) -> None:  # type: ignore[type-arg]
    item = replace(make_item("a"), **change)
    with pytest.raises(ValueError) as info:
        encode_item(item)
    assert not isinstance(info.value, CorruptRecord)


def test_no_pickle_on_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    for name in ("loads", "load", "dumps", "dump", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch, "save", refuse)
    item = make_item("a")
    assert same_item(decode_item(encode_item(item)), item)
    for module in ("item_codec", "feature_store", "catalogue"):
        source = (Path(codec.__file__).parent / f"{module}.py").read_text()
        assert "import pickle" not in source and "torch.load(" not in source, module


def test_format_tag_is_in_the_record() -> None:
    _, meta = _parts(encode_item(make_item("a")))
    assert meta["format"] == FORMAT
