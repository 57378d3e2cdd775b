"""The edge's feedback: hysteresis, key maps and deltas, and the robot's receiver of them."""

from __future__ import annotations

import numpy as np
import pytest

from stac_codec.qp_map import QPLevelMap
from stac_codec.qp_map_wire import encode_qp_map, is_delta
from stac_encoder.qp_map_receiver import MapRejectedError, QPMapReceiver, ReceivedMapFields
from stac_sensitivity.feedback import FeedbackConfig, FeedbackEncoder, FeedbackMap

BANK = tuple(range(-10, 11))


def level_map(indices: np.ndarray, shift: int = 0) -> QPLevelMap:
    return QPLevelMap(np.asarray(indices, dtype=np.uint8), BANK, shift)


def noisy_maps(count: int, seed: int = 0, shape=(12, 16)) -> list[QPLevelMap]:
    """A smooth underlying map plus +-1 level of noise per map (as gradient noise looks)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 10 + np.round(6 * np.sin(xs / 4.0) * np.cos(ys / 5.0)).astype(int)
    return [level_map(np.clip(base + rng.integers(-1, 2, shape), 0, 20)) for _ in range(count)]


def fields(sent: FeedbackMap, max_abs_offset_qp: int = 20) -> ReceivedMapFields:
    rows, cols = sent.level_map.shape
    return ReceivedMapFields(
        sent.session_id, sent.map_seq, sent.reference_map_seq, rows, cols, max_abs_offset_qp,
        sent.data,
    )  # fmt: skip


def test_first_map_is_key_then_deltas_then_a_key_every_interval():
    encoder = FeedbackEncoder(FeedbackConfig(hysteresis_levels=0, key_interval_maps=4))
    sent = [encoder.encode(m) for m in noisy_maps(9)]
    assert [s.is_key for s in sent] == [True, False, False, False, True, False, False, False, True]
    assert [s.map_seq for s in sent] == list(range(1, 10))
    assert all(s.reference_map_seq == s.map_seq - 1 for s in sent if not s.is_key)
    assert [is_delta(s.data) for s in sent] == [not s.is_key for s in sent]


def test_hysteresis_keeps_levels_that_moved_by_at_most_the_threshold():
    encoder = FeedbackEncoder(FeedbackConfig(hysteresis_levels=1))
    first = encoder.encode(level_map(np.full((2, 3), 10)))
    second = encoder.encode(level_map([[11, 9, 12], [8, 10, 15]]))
    np.testing.assert_array_equal(first.level_map.level_indices, np.full((2, 3), 10))
    np.testing.assert_array_equal(second.level_map.level_indices, [[10, 10, 12], [8, 10, 15]])


def test_hysteresis_makes_deltas_of_noisy_maps_much_cheaper():
    def delta_bytes(hysteresis: int) -> float:
        encoder = FeedbackEncoder(FeedbackConfig(hysteresis, key_interval_maps=100))
        sent = [encoder.encode(m) for m in noisy_maps(8, shape=(36, 48))]
        return float(np.mean([len(s.data) for s in sent[1:]]))

    assert delta_bytes(1) < 0.5 * delta_bytes(0)


def test_a_new_bank_or_shape_or_a_request_sends_a_key_map():
    encoder = FeedbackEncoder()
    encoder.encode(level_map(np.zeros((2, 3))))
    assert not encoder.encode(level_map(np.ones((2, 3)))).is_key
    assert encoder.encode(level_map(np.ones((3, 3)))).is_key
    assert encoder.encode(QPLevelMap(np.ones((3, 3), np.uint8), (-2, 0, 2))).is_key
    encoder.request_key()
    assert encoder.encode(QPLevelMap(np.ones((3, 3), np.uint8), (-2, 0, 2))).is_key


def test_the_receiver_reproduces_every_map_the_edge_sent():
    encoder = FeedbackEncoder(FeedbackConfig(key_interval_maps=3))
    receiver = QPMapReceiver()
    for sent in (encoder.encode(m) for m in noisy_maps(7)):
        received = receiver.receive(fields(sent))
        np.testing.assert_array_equal(received.offsets_qp, sent.level_map.offsets_qp)


def test_a_delta_whose_reference_was_missed_is_refused_until_the_next_key():
    encoder = FeedbackEncoder(FeedbackConfig(key_interval_maps=3))
    sent = [encoder.encode(m) for m in noisy_maps(4)]  # key, delta, delta, key
    receiver = QPMapReceiver()
    receiver.receive(fields(sent[0]))
    with pytest.raises(MapRejectedError, match="does not hold"):
        receiver.receive(fields(sent[2]))  # sent[1] was lost
    assert receiver.receive(fields(sent[3])).shape == (12, 16)


def test_a_new_session_forgets_the_old_references():
    first, second = FeedbackEncoder(session_id=1), FeedbackEncoder(session_id=2)
    maps = noisy_maps(2)
    receiver = QPMapReceiver()
    receiver.receive(fields(first.encode(maps[0])))
    second.encode(maps[0])  # the robot never saw the new session's key map
    with pytest.raises(MapRejectedError, match="does not hold"):
        receiver.receive(fields(second.encode(maps[1])))


def test_offsets_beyond_the_declared_or_the_robot_limit_are_refused():
    sent = FeedbackEncoder().encode(level_map(np.full((2, 3), 0)))  # -10 QP everywhere
    with pytest.raises(MapRejectedError, match="exceeds the limit 8"):
        QPMapReceiver().receive(fields(sent, max_abs_offset_qp=8))
    with pytest.raises(MapRejectedError, match="exceeds the limit 6"):
        QPMapReceiver(max_abs_offset_qp=6).receive(fields(sent))
    assert QPMapReceiver(max_abs_offset_qp=10).receive(fields(sent, 10)).shape == (2, 3)


def test_a_header_that_disagrees_with_the_data_is_refused():
    sent = FeedbackEncoder().encode(level_map(np.zeros((2, 3))))
    lying = ReceivedMapFields(sent.session_id, 1, 0, 3, 2, 20, sent.data)
    with pytest.raises(MapRejectedError, match="header says 3x2"):
        QPMapReceiver().receive(lying)


def test_damaged_bytes_are_refused_with_the_reason():
    data = bytearray(encode_qp_map(level_map(np.zeros((2, 3)))))
    data[-3] ^= 0x40
    with pytest.raises(MapRejectedError, match="checksum"):
        QPMapReceiver().receive(ReceivedMapFields(1, 1, 0, 2, 3, 20, bytes(data)))


def test_a_reference_number_that_disagrees_with_the_data_is_refused():
    encoder = FeedbackEncoder()
    key = encoder.encode(noisy_maps(1)[0])
    delta = encoder.encode(noisy_maps(2)[1])
    receiver = QPMapReceiver()
    receiver.receive(fields(key))
    lying_key = ReceivedMapFields(key.session_id, 3, 1, 12, 16, 20, key.data)
    with pytest.raises(MapRejectedError, match="data is a key map"):
        receiver.receive(lying_key)
    lying_delta = ReceivedMapFields(delta.session_id, 4, 0, 12, 16, 20, delta.data)
    with pytest.raises(MapRejectedError, match="data is a delta"):
        receiver.receive(lying_delta)


def test_a_bad_map_of_another_session_does_not_make_the_robot_forget_its_edge():
    edge = FeedbackEncoder(FeedbackConfig(key_interval_maps=100), session_id=1)
    maps = noisy_maps(3)
    receiver = QPMapReceiver()
    receiver.receive(fields(edge.encode(maps[0])))
    forged = ReceivedMapFields(666, 1, 0, 12, 16, 20, b"garbage")
    with pytest.raises(MapRejectedError):
        receiver.receive(forged)
    stray_delta = FeedbackEncoder(session_id=2)
    stray_delta.encode(maps[0])
    with pytest.raises(MapRejectedError, match="does not hold"):
        receiver.receive(fields(stray_delta.encode(maps[1])))
    assert receiver.receive(fields(edge.encode(maps[1]))).shape == (12, 16)  # a delta: held
