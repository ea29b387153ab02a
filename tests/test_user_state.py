"""User state: compact bytes, exact round trip, loud failure on anything else."""
from __future__ import annotations

import pytest
import torch

from mmrec.model import ModelConfig, ParamLayout
from mmrec.user_state import CorruptUserState, UserState, decode_user_state, encode_user_state, id_hash

CFG = ModelConfig()


def sample_state() -> UserState:
    size = ParamLayout(CFG).size
    gen = torch.Generator().manual_seed(0)
    return UserState(
        offsets=torch.randn(size, generator=gen),
        accum=torch.rand(size, generator=gen),
        version=12345678901,
        partition=3,
        position=987654321,
        updated_at=1764100000.25,
        recent=(id_hash("a"), id_hash("b")),
        seen=(id_hash("m1"),),
    )


def test_round_trip_is_bit_exact():
    state = sample_state()
    back = decode_user_state(encode_user_state(state, CFG), CFG)
    assert torch.equal(back.offsets, state.offsets) and torch.equal(back.accum, state.accum)
    assert (back.version, back.partition, back.position, back.updated_at, back.recent, back.seen) == (
        state.version,
        state.partition,
        state.position,
        state.updated_at,
        state.recent,
        state.seen,
    )


def test_encoding_is_compact_and_not_pickle():
    state = sample_state()
    data = encode_user_state(state, CFG)
    params = ParamLayout(CFG).size
    assert data[:4] == b"MMU1"
    assert len(data) == 45 + 8 * (len(state.recent) + len(state.seen)) + 8 * params  # header, rings, 2 vectors
    assert params == CFG.n_layers * (2 * CFG.kernel_size**2 + CFG.channels + 1) + 1


def test_new_user_is_the_cold_start_prior():
    state = UserState.new(CFG)
    assert state.offsets.abs().sum() == 0 and state.version == 0 and state.position == -1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:10],
        lambda b: b"XXXX" + b[4:],
        lambda b: b[:-1],
        lambda b: b + b"\0",
        lambda b: b[:45] + b"\xff" * (len(b) - 45),  # NaNs
    ],
    ids=["short", "magic", "truncated", "trailing", "non-finite"],
)
def test_corrupt_bytes_raise(mutate):
    with pytest.raises(CorruptUserState):
        decode_user_state(mutate(encode_user_state(sample_state(), CFG)), CFG)


def test_state_of_another_model_shape_is_refused():
    data = encode_user_state(UserState.new(ModelConfig(channels=16)), ModelConfig(channels=16))
    with pytest.raises(CorruptUserState, match="another model shape"):
        decode_user_state(data, CFG)


def test_duplicate_detection_by_position_and_by_event_id():
    state = sample_state()
    assert state.has_applied("new", partition=3, position=5)  # at or before the last applied offset
    assert not state.has_applied("new", partition=3, position=987654322)
    assert not state.has_applied("new", partition=4, position=5)  # another partition's offsets say nothing
    assert state.has_applied("a", partition=4, position=5)  # a re-sent event id
    assert state.remember_event("c", keep=2) == (id_hash("b"), id_hash("c"))
    assert state.remember_media("m2", keep=2) == (id_hash("m1"), id_hash("m2"))
    assert state.remember_media("m1", keep=2) == (id_hash("m1"),)  # a repeat moves to the end, no copy
