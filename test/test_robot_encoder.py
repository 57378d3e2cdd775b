"""The robot's encoding loop: map ageing, newest-map policy, keyframes, size changes."""

from __future__ import annotations

import numpy as np
import pytest

from stac_codec.h264_decoder import H264Decoder
from stac_codec.h264_encoder import EncoderConfig
from stac_encoder.frame_flow import FlowConfig
from stac_encoder.robot_encoder import (
    STALE_MAPS_BEFORE_RESYNC,
    MapVerdict,
    QPMapUpdate,
    RobotEncoder,
    RobotEncoderConfig,
    blurred_where_unimportant,
)

WIDTH, HEIGHT = 96, 64  # 6 x 4 macroblocks


def frames(count: int, width: int = WIDTH, height: int = HEIGHT, seed: int = 0):
    """A textured scene panning 2 px per frame (real motion for the flow warper)."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(0, 256, (height, width + 2 * count, 3), dtype=np.uint8)
    return [np.ascontiguousarray(scene[:, 2 * i : 2 * i + width]) for i in range(count)]


ACCEPTED, STALE = MapVerdict.ACCEPTED, MapVerdict.STALE


def update(
    map_seq: int, source_frame_seq: int, stamp_s: float, value: int = -6, **extra
) -> QPMapUpdate:
    offsets = np.full((4, 6), value, np.int8)
    return QPMapUpdate(map_seq, source_frame_seq, stamp_s, offsets, **extra)


def test_frames_are_numbered_and_the_first_is_a_keyframe():
    encoder = RobotEncoder()
    results = [encoder.encode(f, i * 0.1) for i, f in enumerate(frames(3))]
    assert [r.frame_seq for r in results] == [1, 2, 3]
    assert [r.packet.keyframe for r in results] == [True, False, False]
    assert all(r.qp_map_seq == 0 for r in results)
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert all(decoder.decode(r.packet.data, r.frame_seq).ok for r in results)


def test_map_is_applied_from_the_next_frame_and_changes_the_bits():
    video = frames(4)
    plain = RobotEncoder(RobotEncoderConfig(warp_qp_map=False))
    mapped = RobotEncoder(RobotEncoderConfig(warp_qp_map=False))
    for i in range(2):
        plain.encode(video[i], i * 0.1)
        mapped.encode(video[i], i * 0.1)
    assert mapped.submit_qp_map(update(1, 2, 0.1, value=-10)) is ACCEPTED
    with_map = mapped.encode(video[2], 0.2)
    without = plain.encode(video[2], 0.2)
    assert with_map.qp_map_seq == 1 and without.qp_map_seq == 0
    assert with_map.packet.size_bytes > 1.5 * without.packet.size_bytes


def test_a_map_older_than_the_age_limit_falls_back_to_zero():
    encoder = RobotEncoder(RobotEncoderConfig(max_map_age_s=0.5))
    video = frames(3)
    encoder.encode(video[0], 10.0)
    encoder.submit_qp_map(update(1, 1, 10.0))
    assert encoder.encode(video[1], 10.4).qp_map_seq == 1
    assert encoder.encode(video[2], 10.6).qp_map_seq == 0


def test_older_maps_are_ignored_and_the_newest_wins():
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    assert encoder.submit_qp_map(update(5, 1, 0.0)) is ACCEPTED
    assert encoder.submit_qp_map(update(4, 1, 0.0)) is STALE
    assert encoder.submit_qp_map(update(6, 1, 0.0)) is ACCEPTED
    assert encoder.encode(frames(2)[1], 0.1).qp_map_seq == 6


def test_a_late_map_is_warped_from_its_source_frame():
    encoder = RobotEncoder()
    video = frames(6)
    for i in range(5):
        encoder.encode(video[i], i * 0.1)
    assert encoder.submit_qp_map(update(1, 2, 0.1)) is ACCEPTED
    assert encoder.encode(video[5], 0.5).qp_map_seq == 1


@pytest.mark.parametrize(
    "offsets",
    [
        np.zeros((5, 6), np.int8),  # wrong grid
        np.zeros((4, 6), np.int16),  # wrong dtype
        np.full((4, 6), -60, np.int8),  # beyond H.264's QP range
        np.zeros(24, np.int8),  # not 2-D
    ],
)
def test_malformed_maps_are_rejected(offsets):
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    with pytest.raises(ValueError):
        encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, offsets))
    assert encoder.encode(frames(2)[1], 0.1).qp_map_seq == 0


def test_keyframe_on_request():
    encoder = RobotEncoder()
    video = frames(3)
    encoder.encode(video[0], 0.0)
    encoder.request_keyframe()
    assert encoder.encode(video[1], 0.1).packet.keyframe
    assert not encoder.encode(video[2], 0.2).packet.keyframe


def test_a_new_picture_size_restarts_with_a_keyframe_and_drops_the_old_map():
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    encoder.submit_qp_map(update(1, 1, 0.0))
    assert encoder.encode(frames(2)[1], 0.1).qp_map_seq == 1
    bigger = encoder.encode(frames(1, 128, 80)[0], 0.2)
    assert bigger.packet.keyframe and (bigger.width, bigger.height) == (128, 80)
    assert bigger.qp_map_seq == 0


def test_bgr_input_encodes_like_rgb():
    rgb = frames(1)[0]
    a = RobotEncoder().encode(rgb, 0.0, "rgb24")
    b = RobotEncoder().encode(np.ascontiguousarray(rgb[..., ::-1]), 0.0, "bgr24")
    assert a.packet.data == b.packet.data


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match="HxWx3"):
        RobotEncoder().encode(np.zeros((64, 96), np.uint8), 0.0)


@pytest.mark.parametrize(
    "bad_frame",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((1, 40, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((2, 16385, 3), np.uint8),
        np.zeros((64, 96, 3), np.float64),
        np.zeros((64, 96, 3), np.int16),
    ],
    ids=["1x1", "1xN", "0x0", "too wide", "float64", "int16"],
)
def test_a_malformed_frame_changes_nothing(bad_frame):
    """It is refused with ValueError; the stream goes on with the next frame number and no
    keyframe, as if it had never arrived (the encoder is not closed, no false gap)."""
    encoder = RobotEncoder()
    video = frames(3)
    first = encoder.encode(video[0], 0.0)
    with pytest.raises(ValueError):
        encoder.encode(bad_frame, 0.1)
    after = encoder.encode(video[1], 0.2)
    assert (first.frame_seq, after.frame_seq) == (1, 2) and not after.packet.keyframe
    decoder = H264Decoder(WIDTH, HEIGHT)
    assert all(decoder.decode(r.packet.data, r.frame_seq).ok for r in (first, after))


def test_a_map_from_a_restarted_edge_session_is_accepted_at_once():
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    assert encoder.submit_qp_map(update(40, 1, 0.0, session_id=7)) is ACCEPTED
    assert encoder.submit_qp_map(update(1, 1, 0.0, session_id=8)) is ACCEPTED
    assert encoder.encode(frames(2)[1], 0.1).qp_map_seq == 1


def test_after_one_bogus_map_seq_the_numbering_resynchronises():
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    assert encoder.submit_qp_map(update(2**64 - 1, 1, 0.0)) is ACCEPTED
    verdicts = [encoder.submit_qp_map(update(seq, 1, 0.0)) for seq in range(5, 5 + 4)]
    assert verdicts[: STALE_MAPS_BEFORE_RESYNC - 1] == [STALE] * (STALE_MAPS_BEFORE_RESYNC - 1)
    assert verdicts[STALE_MAPS_BEFORE_RESYNC - 1] is MapVerdict.RESYNCED
    assert verdicts[-1] is ACCEPTED
    assert encoder.encode(frames(2)[1], 0.1).qp_map_seq == 8


@pytest.mark.parametrize("stamp", [float("nan"), float("inf"), -float("inf"), 100.0])
def test_maps_with_impossible_stamps_are_refused(stamp):
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 10.0)
    with pytest.raises(ValueError, match="stamp"):
        encoder.submit_qp_map(update(1, 1, stamp))


def test_a_map_from_a_frame_never_encoded_is_refused():
    encoder = RobotEncoder()
    encoder.encode(frames(1)[0], 0.0)
    with pytest.raises(ValueError, match="never encoded"):
        encoder.submit_qp_map(update(1, 500, 0.0))


def test_a_map_older_than_the_age_limit_in_either_direction_is_not_applied():
    encoder = RobotEncoder(RobotEncoderConfig(max_map_age_s=0.5))
    video = frames(2)
    encoder.encode(video[0], 10.0)
    encoder.submit_qp_map(update(1, 1, 10.9))  # ahead of the frame, within the tolerance
    assert encoder.encode(video[1], 10.1).qp_map_seq == 0


def test_the_calibrations_aq_strength_reopens_the_encoder():
    """Where the AQ does not fade with the camera's motion, x264's own AQ takes the asked
    strength: a new encoder, starting with an IDR picture."""
    encoder = RobotEncoder(RobotEncoderConfig(aq_motion_fade_px=0.0))
    video = frames(4)
    encoder.encode(video[0], 0.0)
    assert encoder.aq_strength == pytest.approx(0.001)
    encoder.submit_qp_map(update(1, 1, 0.0, aq_strength=1.0))
    switched = encoder.encode(video[1], 0.1)
    assert encoder.aq_strength == 1.0
    assert switched.packet.keyframe and switched.qp_map_seq == 1
    assert not encoder.encode(video[2], 0.2).packet.keyframe
    with pytest.raises(ValueError, match="aq_strength"):
        encoder.submit_qp_map(update(2, 1, 0.0, aq_strength=7.0))


def test_offsets_are_scaled_per_frame_kind_and_idr_pictures_are_foreseen():
    """idr_offset_scale 0: the map leaves IDR pictures alone; the encoder knows in advance
    which frames x264 will make IDR (every gop_frames, and on request)."""
    from stac_codec.h264_encoder import EncoderConfig

    video = frames(12)
    config = RobotEncoderConfig(
        encoder=EncoderConfig(gop_frames=4), warp_qp_map=False, idr_offset_scale=0.0
    )
    scaled, plain = RobotEncoder(config), RobotEncoder(RobotEncoderConfig(
        encoder=EncoderConfig(gop_frames=4), warp_qp_map=False))  # fmt: skip
    sizes = {}
    for index, frame in enumerate(video):
        if index == 1:
            for encoder in (scaled, plain):
                encoder.submit_qp_map(update(1, 1, 0.0, value=-12))
        if index == 6:
            scaled.request_keyframe()
            plain.request_keyframe()
        foreseen = scaled._keyframe_requested or scaled.next_is_idr()
        result = scaled.encode(frame, index * 0.1)
        assert result.packet.keyframe == foreseen
        sizes[index] = (
            result.packet.size_bytes,
            plain.encode(frame, index * 0.1).packet.size_bytes,
        )
    idr = [i for i in range(12) if i in (0, 4, 6, 10)]
    assert all(sizes[i][0] < sizes[i][1] for i in idr if i > 0)  # map left off IDR pictures
    assert all(sizes[i][0] == sizes[i][1] for i in (1, 2, 3))  # P-frames keep the map


@pytest.mark.parametrize("refresh", ["intra_refresh", "none"])
def test_without_periodic_idr_only_the_first_picture_and_requests_are_foreseen(refresh):
    """With intra refresh (or none) x264 makes no IDR of its own after the first picture; the
    encoder foresees none (a bitrate target saves for none) and a request is still an IDR."""
    from stac_codec.h264_encoder import EncoderConfig

    config = EncoderConfig(gop_frames=3, refresh=refresh, mbtree=True)
    encoder = RobotEncoder(RobotEncoderConfig(encoder=config, warp_qp_map=False))
    assert encoder.next_is_idr()
    keyframes = []
    for index, frame in enumerate(frames(10)):
        if index == 7:
            encoder.request_keyframe()
        keyframes.append(encoder.encode(frame, index * 0.1).packet.keyframe)
        assert encoder.frames_to_periodic_idr() is None
        assert not encoder.next_is_idr()
    assert [i for i, key in enumerate(keyframes) if key] == [0, 7]


def test_the_nodes_refresh_and_mbtree_parameters_reach_the_encoder():
    from stac_encoder.encoder_node import PARAMETERS, encoder_config_from

    params = {spec.name: spec.default for spec in PARAMETERS}
    config = encoder_config_from({**params, "refresh": "intra_refresh", "mbtree": True}).encoder
    assert (config.refresh, config.mbtree) == ("intra_refresh", True)
    # auto (the default): intra refresh only when the node starts holding a bitrate target
    assert params["refresh"] == "auto"
    assert encoder_config_from(params).encoder.refresh == "idr"
    held = encoder_config_from({**params, "target_kbps": 500.0}).encoder
    assert held.refresh == "intra_refresh"
    abr = encoder_config_from({**params, "rate_control": "bitrate"}).encoder
    assert abr.refresh == "intra_refresh"
    with pytest.raises(ValueError, match="mbtree needs refresh"):
        encoder_config_from({**params, "refresh": "idr", "mbtree": True})


def _hold_encoder(**hold) -> RobotEncoder:
    return RobotEncoder(RobotEncoderConfig(warp_qp_map=False, **hold))


def _right_half_unimportant() -> np.ndarray:
    offsets = np.zeros((4, 6), np.int8)
    offsets[:, 3:] = 8
    return offsets


@pytest.mark.parametrize("source", ["input", "decoded"])
def test_held_back_macroblocks_are_coded_as_the_previous_picture_without_delay(source):
    """hold_offset_qp: P-frame macroblocks the map marks unimportant get the previous
    picture's pixels (x264 skips them: fewer bytes), the others follow the camera; every
    frame's access unit comes out of the call that takes it and decodes at once. The right
    half is fresh noise every frame (nothing predicts it: costly unless held)."""
    rng = np.random.default_rng(2)
    video = [f.copy() for f in frames(8)]
    for frame in video:
        frame[:, 48:] = rng.integers(0, 256, (HEIGHT, 48, 3), dtype=np.uint8)
    held, plain = _hold_encoder(hold_offset_qp=8, hold_source=source), _hold_encoder()
    decoder = H264Decoder(WIDTH, HEIGHT)
    sizes = {"held": 0, "plain": 0}
    pictures = []
    for index, frame in enumerate(video):
        if index == 1:
            for encoder in (held, plain):
                encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, _right_half_unimportant()))
        result = held.encode(frame, index * 0.1)
        decoded = decoder.decode(result.packet.data, result.frame_seq)
        assert decoded.ok and result.frame_seq == index + 1  # zero delay
        pictures.append(decoded.image)
        sizes["held"] += result.packet.size_bytes
        sizes["plain"] += plain.encode(frame, index * 0.1).packet.size_bytes
        assert held.last_held_macroblocks == (12 if index >= 1 else 0)
    assert sizes["held"] < 0.6 * sizes["plain"]
    right, left = np.s_[:, 48:], np.s_[:, :48]
    frozen = np.abs(pictures[7][right].astype(int) - pictures[1][right].astype(int)).mean()
    moving = np.abs(pictures[7][left].astype(int) - video[7][left].astype(int)).mean()
    then = np.abs(pictures[7][left].astype(int) - video[1][left].astype(int)).mean()
    assert frozen < 1 and moving < 0.75 * then  # held area frozen, the rest follows the camera


def test_held_back_macroblocks_are_refreshed_by_column_and_by_change():
    video = frames(6)
    by_column = _hold_encoder(hold_offset_qp=8, hold_refresh_frames=3)
    by_change = _hold_encoder(hold_offset_qp=8, hold_max_change=1.0)
    counts = {"column": [], "change": []}
    for index, frame in enumerate(video):
        if index == 1:
            for encoder in (by_column, by_change):
                encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, _right_half_unimportant()))
        by_column.encode(frame, index * 0.1)
        by_change.encode(frame, index * 0.1)
        counts["column"].append(by_column.last_held_macroblocks)
        counts["change"].append(by_change.last_held_macroblocks)
    # 3 unimportant columns, one of them coded from the camera each frame
    assert counts["column"][1:] == [8] * 5
    assert counts["change"] == [0] * 6  # the panning texture changes every macroblock


def test_an_idr_picture_is_never_held_back_and_requests_still_get_one():
    video = frames(5)
    encoder = _hold_encoder(hold_offset_qp=8)
    decoder = H264Decoder(WIDTH, HEIGHT)
    for index, frame in enumerate(video):
        if index == 1:
            encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, _right_half_unimportant()))
        if index == 3:
            encoder.request_keyframe()
        result = encoder.encode(frame, index * 0.1)
        assert result.packet.keyframe == (index in (0, 3))
        assert encoder.last_held_macroblocks == (0 if index in (0, 3) else 12)
        decoded = decoder.decode(result.packet.data, result.frame_seq)
        assert decoded.ok
        if index == 3:  # the IDR shows the camera everywhere, not the held picture
            right = np.s_[:, 48:]
            now = np.abs(decoded.image[right].astype(int) - frame[right].astype(int)).mean()
            held = np.abs(decoded.image[right].astype(int) - video[1][right].astype(int)).mean()
            assert now < 0.75 * held


def test_blur_follows_the_map_offsets_between_macroblock_centres():
    """blurred_where_unimportant: untouched where no offset is positive, the whole blur
    inside a block of macroblocks at the full offset, part of it at half the offset."""
    import cv2

    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    flat = np.zeros((4, 6), np.int8)
    assert blurred_where_unimportant(frame, flat - 3, 2.0, 8.0) is frame
    assert blurred_where_unimportant(frame, None, 2.0, 8.0) is frame
    offsets = flat.copy()
    offsets[:, 3:] = 8  # right half: the whole blur
    offsets[:, :2] = 4  # left third: half of it
    out = blurred_where_unimportant(frame, offsets, 2.0, 8.0).astype(int)
    blur = cv2.GaussianBlur(frame, (0, 0), 2.0).astype(int)
    assert np.abs(out[:, 64:] - blur[:, 64:]).max() <= 1
    half = (frame[:, :16].astype(int) + blur[:, :16]) / 2
    assert np.abs(out[:, :16] - half).max() <= 1
    assert np.abs(out[:, :16] - blur[:, :16]).mean() > 10  # not the whole blur there


def test_blurred_macroblocks_cost_fewer_bytes_and_idr_pictures_can_keep_their_texture():
    """blur_sigma_px: a half of fresh noise every frame marked unimportant costs fewer
    bytes blurred; blur_p_frames_only leaves IDR pictures as the camera gave them."""
    rng = np.random.default_rng(5)
    video = [f.copy() for f in frames(6)]
    for frame in video:
        frame[:, 48:] = rng.integers(0, 256, (HEIGHT, 48, 3), dtype=np.uint8)
    sizes = {}
    for name, config in {
        "plain": {},
        "blur": {"blur_sigma_px": 3.0},
        "p_only": {"blur_sigma_px": 3.0, "blur_p_frames_only": True},
    }.items():
        encoder = _hold_encoder(**config)
        encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, _right_half_unimportant()))
        sizes[name] = [encoder.encode(f, i * 0.1).packet.size_bytes for i, f in enumerate(video)]
    assert sum(sizes["blur"]) < 0.8 * sum(sizes["plain"])
    assert sizes["p_only"][0] == sizes["plain"][0] and sizes["blur"][0] < sizes["plain"][0]
    assert sum(sizes["p_only"][1:]) < 0.8 * sum(sizes["plain"][1:])
    with pytest.raises(ValueError, match="blur_sigma_px"):
        RobotEncoderConfig(blur_sigma_px=-1.0)
    with pytest.raises(ValueError, match="blur_full_offset_qp"):
        RobotEncoderConfig(blur_full_offset_qp=0.0)


def test_reference_aware_offsets_are_lower_where_the_previous_frame_predicts():
    """reference_qp_strength: a static half (the previous frame predicts it) gets lower
    offsets than a half of fresh noise every frame (nothing predicts it), from a flat map;
    off, the map is handed on as it was."""
    rng = np.random.default_rng(1)
    static = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    maps = {}
    for strength in (0.0, 2.0):
        encoder = RobotEncoder(RobotEncoderConfig(reference_qp_strength=strength))
        for index in range(5):
            frame = static.copy()
            frame[:, :48] = rng.integers(0, 256, (HEIGHT, 48, 3), dtype=np.uint8)
            if index == 1:
                encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, np.zeros((4, 6), np.int8)))
            encoder.encode(frame, index * 0.1)
        maps[strength] = encoder.last_qp_map
    assert not maps[0.0].any()
    noise, still = maps[2.0][:, :3], maps[2.0][:, 3:]
    assert still.max() < noise.min() == 0 and still.mean() <= -5
    with pytest.raises(ValueError, match="reference_qp_strength"):
        RobotEncoderConfig(reference_qp_strength=-1.0)
    with pytest.raises(ValueError, match="hold_offset_qp"):
        RobotEncoderConfig(hold_offset_qp=-1)
    with pytest.raises(ValueError, match="hold_source"):
        RobotEncoderConfig(hold_source="camera")


def test_the_nodes_hold_and_reference_parameters_reach_the_encoder():
    from stac_encoder.encoder_node import PARAMETERS, encoder_config_from

    params = {spec.name: spec.default for spec in PARAMETERS}
    default = encoder_config_from(params)
    assert (default.hold_offset_qp, default.reference_qp_strength) == (0, 0.0)
    changed = encoder_config_from(
        {**params, "hold_offset_qp": 5, "hold_refresh_frames": 10, "hold_max_change": 12.0,
         "reference_qp_strength": 1.5, "hold_source": "decoded"}
    )  # fmt: skip
    assert changed.hold_source == "decoded" and default.hold_source == "input"
    assert (changed.hold_offset_qp, changed.hold_refresh_frames) == (5, 10)
    assert (changed.hold_max_change, changed.reference_qp_strength) == (12.0, 1.5)


@pytest.mark.parametrize(("fade_px", "expected"), [(0.0, -8), (16.0, -4), (48.0, -6)])
def test_map_fades_as_the_content_moves_away_from_the_maps_frame(fade_px, expected):
    """map_fade_px F: offsets at F / (F + d) of their strength, d the content's mean
    displacement since the map's frame (here 2 px a frame over 8 frames: 16 px)."""
    video = frames(10, width=192, height=128, seed=1)
    encoder = RobotEncoder(RobotEncoderConfig(map_fade_px=fade_px))
    encoder.encode(video[0], 0.0)
    offsets = np.full((8, 12), -8, np.int8)
    encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, offsets))
    for i in range(1, 9):
        encoder.encode(video[i], 0.04 * i)
    # the map's frame is the first: 8 frames of 2 px (its own frame shows no motion)
    assert encoder.last_map_scale == pytest.approx(
        1.0 if not fade_px else fade_px / (fade_px + 16.0), abs=0.06
    )
    assert int(np.median(encoder.last_qp_map)) == expected


def test_a_map_older_than_the_flows_history_is_fully_faded():
    """A map whose frame the flow no longer holds cannot be told how far its content moved,
    only that it is old: with the fade on it counts as gone (uniform QP), without the fade it
    is used as it is."""
    video = frames(10, width=192, height=128, seed=1)
    for fade_px, expected in ((16.0, 0), (0.0, -8)):
        config = RobotEncoderConfig(map_fade_px=fade_px, warp=FlowConfig(history_frames=3))
        encoder = RobotEncoder(config)
        for i in range(8):
            encoder.encode(video[i], 0.04 * i)
        encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, np.full((8, 12), -8, np.int8)))
        encoder.encode(video[8], 0.32)
        assert encoder.last_map_scale == (0.0 if fade_px else 1.0)
        assert int(np.median(encoder.last_qp_map)) == expected


def test_the_asked_aq_strength_fades_with_the_cameras_motion_without_a_new_encoder():
    """aq_motion_fade_px (the default, 0.25): x264 stays at the offsets-only strength, and the
    AQ a map asks for is computed per frame at strength x F / (F + m), m the median
    macroblock's motion since the reference picture (here a 2-px pan a frame); no IDR
    picture for it. The first picture, an IDR, takes the asked strength in full."""
    video = frames(10, width=192, height=128, seed=1)
    encoder = RobotEncoder(RobotEncoderConfig(encoder=EncoderConfig(aq_strength=0.5)))
    encoder.encode(video[0], 0.0)
    assert encoder.last_variance_aq_strength == pytest.approx(0.5)
    encoder.submit_qp_map(QPMapUpdate(1, 1, 0.0, np.full((8, 12), -8, np.int8), aq_strength=1.0))
    for i in range(1, 9):
        result = encoder.encode(video[i], 0.04 * i)
        assert not result.packet.keyframe
        assert encoder.last_variance_aq_strength == pytest.approx(0.25 / 2.25, abs=0.03)
    assert encoder.aq_strength == 1.0
    encoder.request_keyframe()
    assert encoder.encode(video[9], 0.36).packet.keyframe
    assert encoder.last_variance_aq_strength == pytest.approx(1.0)  # an IDR: in full


def test_a_still_camera_keeps_the_asked_aq_strength_while_people_walk_through():
    """The camera's motion is the median macroblock's: a block walking across a still scene
    does not fade the AQ; the scene itself moving does."""
    rng = np.random.default_rng(2)
    scene = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)
    walker = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    encoder = RobotEncoder(RobotEncoderConfig(encoder=EncoderConfig(aq_strength=0.5)))
    for i in range(6):
        frame = scene.copy()
        frame[48:80, 20 + 8 * i : 52 + 8 * i] = walker
        encoder.encode(frame, 0.04 * i)
        assert encoder.last_variance_aq_strength == pytest.approx(0.5, abs=0.02)
    off = RobotEncoder(
        RobotEncoderConfig(encoder=EncoderConfig(aq_strength=0.5), warp_qp_map=False)
    )
    off.encode(scene, 0.0)
    off.encode(scene, 0.04)
    assert off.last_variance_aq_strength == 0.0  # no flow: x264's own AQ at 0.5


def test_aq_motion_fade_must_not_be_negative():
    with pytest.raises(ValueError, match="aq_motion_fade_px"):
        RobotEncoderConfig(aq_motion_fade_px=-0.5)


def test_map_fade_must_not_be_negative():
    with pytest.raises(ValueError, match="map_fade_px"):
        RobotEncoderConfig(map_fade_px=-1.0)
