"""The robot loop: keyframe triggers, masks for every frame in both modes, and the bitrate
target, on small synthetic clips (no model, no ROS)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from stac_codec.h264_decoder import H264Decoder
from stac_encoder.keyframes import FarWhenFree, KeyframeConfig
from stac_encoder.rate_control import BitrateController, RateControlConfig
from stac_encoder.robot_encoder import RobotEncoderConfig
from stac_encoder.robot_loop import RobotLoop, RobotLoopConfig

WIDTH, HEIGHT = 160, 96
FPS = 25.0


@pytest.fixture(scope="module")
def worlds() -> tuple[np.ndarray, np.ndarray]:
    """Two unrelated textured scenes (a cut goes from one to the other)."""
    rng = np.random.default_rng(11)
    made = []
    for _ in range(2):
        noise = rng.integers(0, 256, (HEIGHT + 40, WIDTH + 400, 3)).astype(np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
        made.append(cv2.normalize(smooth, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8))
    return made[0], made[1]


def pan(world: np.ndarray, index: int, speed: int = 2) -> np.ndarray:
    return np.ascontiguousarray(world[20 : 20 + HEIGHT, 20 + speed * index :][:, :WIDTH])


def keyframe_loop(**keyframes) -> RobotLoop:
    return RobotLoop(RobotLoopConfig(mode="keyframe", keyframes=KeyframeConfig(**keyframes)))


def run(loop: RobotLoop, frames, answer: bool = True) -> list:
    """Feed frames at 25 fps; the edge answers every keyframe at once when `answer`."""
    outcomes = []
    for index, frame in enumerate(frames):
        outcome = loop.process(frame, index / FPS)
        if outcome.encoded is not None and answer:
            loop.submit_mask(np.zeros((HEIGHT, WIDTH), np.uint8), outcome.encoded.frame_seq)
        outcomes.append(outcome)
    return outcomes


def sent(outcomes) -> list[tuple[int, str]]:
    return [(o.flow_seq - 1, o.decision.reason) for o in outcomes if o.encoded is not None]


def run_answering_late(loop: RobotLoop, frames, near_delay: int, far_delay: int) -> list:
    """Feed frames at 25 fps; the edge's mask of a keyframe arrives `near_delay` camera
    frames after it (`far_delay` for a far one), just before that frame."""
    outcomes, due = [], {}
    for index, frame in enumerate(frames):
        for frame_seq in due.pop(index, []):
            loop.submit_mask(np.zeros((HEIGHT, WIDTH), np.uint8), frame_seq)
        outcome = loop.process(frame, index / FPS)
        if outcome.encoded is not None:
            delay = far_delay if outcome.encoded.packet.far else near_delay
            due.setdefault(index + delay, []).append(outcome.encoded.frame_seq)
        outcomes.append(outcome)
    return outcomes


def test_near_keyframes_take_the_far_preset_only_while_it_delays_no_mask(worlds):
    """FarWhenFree: masks of far keyframes held as young as near ones (the round trip had
    slack before the next camera frame): near keyframes go far too, but for a probe now and
    then; far masks a frame older: near keyframes stay near, but for a probe."""
    frames = [pan(worlds[0], 0)] * 80  # a still scene: a keyframe every 2nd frame
    config = {"max_interval_frames": 2, "far_gap_frames": 4}

    def far_share(near_delay: int, far_delay: int, **extra) -> float:
        loop = keyframe_loop(**config, **extra)
        outcomes = run_answering_late(loop, frames, near_delay, far_delay)
        fars = [o.encoded.packet.far for o in outcomes[1:] if o.encoded is not None]
        assert len(fars) >= 35
        return sum(fars) / len(fars)

    assert far_share(1, 1) > 0.9  # free: far but for the probes
    assert far_share(1, 2) < 0.15  # a frame older: near but for the probes (and the first)
    assert far_share(1, 1, far_when_free=False) == 0.0


def test_far_when_free_compares_the_ages_at_which_masks_were_first_held():
    chooser = FarWhenFree()
    # a far keyframe that takes a frame interval longer is never free: not even tried
    assert not chooser.choose(extra_encode_s=0.056, frame_interval_s=0.04)
    assert chooser.choose(extra_encode_s=0.037, frame_interval_s=0.1)
    assert chooser.choose()  # nothing learnt: try far
    chooser.sent(10, far=True)
    chooser.held(10, 12)
    assert chooser.median_age_frames(True) == 2.0
    assert not chooser.choose()  # far known, near not: try near
    chooser.sent(12, far=False)
    chooser.sent(13, far=False)  # its mask never held: superseded by the next
    chooser.sent(14, far=False)
    chooser.held(14, 15)
    chooser.held(13, 16)  # an older mask after a newer one teaches nothing
    assert chooser.median_age_frames(False) == 1.0
    # near masks are younger: far only as a probe, after 12 near keyframes, then 24, 48, 96
    first = FarWhenFree.PROBE_EVERY
    choices = [chooser.choose() for _ in range(first + 2 * first + 4 * first)]
    probes = [index + 1 for index, far in enumerate(choices) if far]
    assert probes == [first, 3 * first, 7 * first]
    chooser.sent(20, far=True)
    chooser.held(20, 21)  # far ages 2, 1: median 1.5 > 1
    assert not chooser.choose()
    for seq in (30, 40, 50):
        chooser.sent(seq, far=True)
        chooser.held(seq, seq + 1)
    assert chooser.median_age_frames(True) == 1.0
    chooser.sent(60, far=True)
    chooser.held(60, 65)  # one mask the edge held back: the median does not move
    assert chooser.median_age_frames(True) == 1.0
    # the choice changed to far: the first probe (near) again after 12
    assert sum(chooser.choose() for _ in range(FarWhenFree.PROBE_EVERY)) == (
        FarWhenFree.PROBE_EVERY - 1
    )
    for seq in range(70, 80):
        chooser.sent(seq, far=True)
        chooser.held(seq, seq + 3)  # HISTORY ages of 3 replace what came before
    assert chooser.median_age_frames(True) == 3.0


def test_a_static_scene_sends_only_max_interval_keyframes(worlds):
    frames = [pan(worlds[0], 0)] * 31
    outcomes = run(keyframe_loop(max_interval_frames=10), frames)
    assert sent(outcomes) == [(0, "first"), (10, "max_interval"), (20, "max_interval"),
                              (30, "max_interval")]  # fmt: skip
    assert [o.encoded.packet.keyframe for o in outcomes if o.encoded] == [True] + [False] * 3


def test_keyframes_far_from_the_one_before_get_the_far_preset_and_stream_frames_never(worlds):
    frames = [pan(worlds[0], 0)] * 16
    spaced = run(keyframe_loop(max_interval_frames=5, far_gap_frames=5), frames)
    assert [o.encoded.packet.far for o in spaced if o.encoded] == [False, True, True, True]
    close = run(keyframe_loop(max_interval_frames=5, far_gap_frames=6, far_when_free=False), frames)
    assert not any(o.encoded.packet.far for o in close if o.encoded)
    off = run(keyframe_loop(max_interval_frames=5, far_preset=""), frames)
    assert not any(o.encoded.packet.far for o in off if o.encoded)
    stream = run(RobotLoop(RobotLoopConfig(keyframes=KeyframeConfig(far_gap_frames=1))), frames)
    assert not any(o.encoded.packet.far for o in stream)
    with pytest.raises(ValueError, match="far_preset"):
        KeyframeConfig(far_preset="warp9")
    with pytest.raises(ValueError, match="far_gap_frames"):
        RobotEncoderConfig(far_gap_frames=4)


def test_a_pan_that_flow_explains_is_not_stale(worlds):
    outcomes = run(keyframe_loop(max_interval_frames=20), [pan(worlds[0], i) for i in range(25)])
    assert sent(outcomes) == [(0, "first"), (20, "max_interval")]


def test_a_cut_sends_an_idr_at_once(worlds):
    frames = [pan(worlds[0], 0)] * 8 + [pan(worlds[1], 0)] * 4
    outcomes = run(keyframe_loop(max_interval_frames=50), frames)
    assert sent(outcomes) == [(0, "first"), (8, "cut")]
    assert outcomes[8].encoded.packet.keyframe  # IDR
    assert outcomes[8].decision.psnr_db < 20.0


def test_new_content_makes_the_state_stale(worlds):
    """Content that flow cannot explain (an object appears) sends a keyframe."""
    frames = []
    for index in range(12):
        frame = pan(worlds[0], 0).copy()
        if index >= 6:  # a bright square arrives and grows
            size = 12 + 6 * (index - 6)
            frame[10 : 10 + size, 30 : 30 + size] = 255
        frames.append(frame)
    outcomes = run(keyframe_loop(max_interval_frames=50, stale_psnr_db=26.0), frames)
    reasons = sent(outcomes)
    assert reasons[0] == (0, "first") and any(reason == "stale" for _, reason in reasons[1:])


def test_a_busy_edge_gets_nothing_queued(worlds):
    """The edge answers nothing: after the first keyframe the robot waits (the frames that are
    due are held, not queued) until the timeout, then sends one and waits again."""
    frames = [pan(worlds[0], 0)] * 8 + [pan(worlds[1], 0)] * 30
    loop = keyframe_loop(max_interval_frames=5, edge_timeout_s=0.5)
    outcomes = run(loop, frames, answer=False)
    times = [index / FPS for index, _ in sent(outcomes)]
    assert times[0] == 0.0
    assert all(later - earlier > 0.5 for earlier, later in zip(times, times[1:], strict=False))
    waited = [o.decision.waited for o in outcomes]
    assert waited[8]  # the cut came while the edge was busy: held back, not sent
    # once the edge answers, the pending cut goes out at once
    answered = keyframe_loop(max_interval_frames=50, edge_timeout_s=10.0)
    first = run(answered, frames[:9], answer=False)
    assert sent(first) == [(0, "first")]
    answered.submit_mask(np.zeros((HEIGHT, WIDTH), np.uint8), 1)
    follow = answered.process(frames[9], 9 / FPS)
    assert follow.encoded is not None and follow.decision.reason == "cut"
    # a keep (near_lossless_gated: the edge's mask did not change) is an answer too
    kept = keyframe_loop(max_interval_frames=50, edge_timeout_s=10.0)
    run(kept, frames[:9], answer=False)
    kept.mask_kept(1)
    follow = kept.process(frames[9], 9 / FPS)
    assert follow.encoded is not None and follow.decision.reason == "cut"


def test_keyframes_decode_as_one_stream(worlds):
    """Only keyframes reach the encoder: P-frames predicted from the previous keyframe."""
    frames = [pan(worlds[0], i, speed=1) for i in range(30)]
    outcomes = run(keyframe_loop(max_interval_frames=7), frames)
    decoder = H264Decoder(WIDTH, HEIGHT)
    results = [o.encoded for o in outcomes if o.encoded is not None]
    assert [r.frame_seq for r in results] == list(range(1, len(results) + 1))
    assert all(decoder.decode(r.packet.data, r.frame_seq).ok for r in results)


@pytest.mark.parametrize("mode", ["stream", "keyframe"])
def test_a_mask_for_every_camera_frame_once_the_edge_answered(worlds, mode):
    frames = [pan(worlds[0], i) for i in range(20)]
    loop = RobotLoop(RobotLoopConfig(mode=mode, keyframes=KeyframeConfig(max_interval_frames=6)))
    outcomes = run(loop, frames)
    assert outcomes[0].mask is None  # the edge has not answered anything yet
    masks = [o.mask for o in outcomes[1:]]
    assert all(m is not None and m.class_ids.shape == (HEIGHT, WIDTH) for m in masks)
    ages = [o.mask.age_frames for o in outcomes[1:]]
    if mode == "stream":
        assert ages == [1] * 19  # the previous frame's mask came back before the next frame
    else:  # the keyframe's mask, carried over the frames until the next keyframe
        assert ages[:7] == [1, 2, 3, 4, 5, 6, 1]


@pytest.mark.parametrize("mode", ["stream", "keyframe"])
def test_a_scene_cut_drops_the_mask_of_the_previous_scene(worlds, mode):
    """Flow cannot carry a mask into another scene: from the cut on the robot holds none
    (and refuses a late mask of a frame before the cut) until the edge's mask of a frame of
    the new scene arrives."""
    frames = [pan(worlds[0], i) for i in range(8)] + [pan(worlds[1], i) for i in range(4)]
    for drop in (True, False):
        loop = RobotLoop(RobotLoopConfig(mode=mode, drop_masks_at_cuts=drop))
        sky = np.ones((HEIGHT, WIDTH), np.uint8)
        before_cut, outcomes = [], []
        for index, frame in enumerate(frames):
            outcome = loop.process(frame, index / FPS)
            outcomes.append(outcome)
            if outcome.encoded is None:
                continue
            if index < 8:
                before_cut.append(outcome.encoded.frame_seq)
                if len(before_cut) == 1:
                    assert loop.submit_mask(sky, outcome.encoded.frame_seq)
            elif index == 8:
                cut_seq = outcome.encoded.frame_seq
        assert all(o.mask is not None for o in outcomes[1:8])
        if not drop:  # carried into the new scene, as before this option
            assert all(o.mask is not None and o.mask.source_seq == 1 for o in outcomes[8:])
            continue
        assert all(o.mask is None for o in outcomes[8:])
        assert not loop.submit_mask(sky, before_cut[-1])  # a late mask of the old scene
        assert loop.submit_mask(2 * sky, cut_seq)
        after = loop.process(frames[-1], len(frames) / FPS)
        assert after.mask is not None and after.mask.source_seq == 9
        assert after.mask.class_ids.max() == 2


def synthetic_clip(count: int) -> list[np.ndarray]:
    """A textured scene panning at 1 px per frame, then 5, alternating every 2 s (so the bits
    a frame needs change under the controller), with a little sensor noise."""
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 256, (HEIGHT + 8, WIDTH + 6 * count + 8, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 1.5)
    frames, x = [], 0
    for index in range(count):
        x += 1 if index // 50 % 2 == 0 else 5
        frame = smooth[4 : 4 + HEIGHT, x : x + WIDTH] + rng.normal(0, 1.0, (HEIGHT, WIDTH, 3))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def window_errors(sizes, target_kbps: float, start: int, window: int) -> np.ndarray:
    bits = 8.0 * np.asarray(sizes, dtype=float)
    sums = np.convolve(bits, np.ones(window), mode="valid")
    return (sums / (1e3 * target_kbps * window / FPS) - 1.0)[start:]


def test_the_bitrate_target_is_held_under_a_map_and_follows_a_step():
    frames = synthetic_clip(300)
    config = RobotLoopConfig(
        encoder=RobotEncoderConfig(warp_qp_map=False),
        rate=RateControlConfig(target_kbps=300.0, overhead_bytes=0),  # sizes: access units
        propagate_masks=False,
    )
    loop = RobotLoop(config)
    sizes = []
    for index, frame in enumerate(frames):
        if index == 150:
            loop.set_target_kbps(150.0)
        sizes.append(loop.process(frame, index / FPS).encoded.packet.size_bytes)
    window = int(2 * FPS)
    before = window_errors(sizes[:150], 300.0, start=window, window=window)
    after = window_errors(sizes[150:], 150.0, start=window, window=window)
    assert np.abs(before).max() < 0.10, before
    assert np.abs(after).max() < 0.10, after  # settled within 2 s of the step


def test_controller_alone_moves_the_crf_against_the_excess():
    controller = BitrateController(RateControlConfig(target_kbps=100.0), initial_crf=30.0)
    for index in range(10):  # frames four times too big: the CRF must go up
        crf = controller.next_crf(index / FPS, idr=False)
        controller.frame_encoded(2000, index / FPS, False, crf)
    assert controller.crf > 30.0 and controller.fullness_bits > 0
    with pytest.raises(ValueError):
        controller.set_target(-1.0)


def test_an_idr_is_capped_at_its_shares_of_the_target():
    """x264 gives an IDR the QP of the recent P-frames whatever the CRF, so the cap works
    through the IDR's offsets: an IDR that cost 10 shares at CRF 30 needs 6 log2(10/3) more
    QP to cost 3 (the default idr_max_shares)."""
    config = RateControlConfig(target_kbps=100.0, overhead_bytes=0)
    share_bits = 100e3 / FPS
    controller = BitrateController(config, initial_crf=30.0)
    assert controller.idr_extra_qp(0.0) == 0  # no IDR seen: nothing to go on
    controller.frame_encoded(round(10 * share_bits / 8), 0.0, True, 30.0)
    assert controller.next_crf(1 / FPS, idr=True) == 30.0  # the CRF stays
    assert controller.idr_extra_qp(1 / FPS) == 11  # ceil(6 log2(10/3)) = ceil(10.4)
    controller.crf = 45.0  # P-frames already coarser than the cap: nothing to add
    assert controller.idr_extra_qp(1 / FPS) == 0
    uncapped = BitrateController(RateControlConfig(target_kbps=100.0, idr_max_shares=0.0))
    uncapped.frame_encoded(round(10 * share_bits / 8), 0.0, True, 30.0)
    assert uncapped.idr_extra_qp(1 / FPS) == 0


def test_the_loop_saves_for_a_foreseen_idr_and_spreads_its_refinement():
    config = RateControlConfig(target_kbps=100.0, overhead_bytes=0)
    share_bits = 100e3 / FPS

    def after_an_idr_of_ten_shares() -> BitrateController:
        controller = BitrateController(config, initial_crf=30.0)
        controller.frame_encoded(round(10 * share_bits / 8), 0.0, True, 30.0)
        for index in range(1, 60):  # P-frames of one share at CRF 30, half per 6 QP above
            crf = controller.next_crf(index / FPS, idr=False)
            bits = share_bits * 2.0 ** ((30.0 - crf) / 6.0)
            controller.frame_encoded(round(bits / 8), index / FPS, False, crf)
        return controller

    unaware, saving = after_an_idr_of_ten_shares(), after_an_idr_of_ten_shares()
    assert unaware.next_crf(60 / FPS, False) == saving.next_crf(60 / FPS, False, 60)  # far off
    unaware, saving = after_an_idr_of_ten_shares(), after_an_idr_of_ten_shares()
    assert saving.next_crf(60 / FPS, False, frames_to_idr=2) > unaware.next_crf(60 / FPS, False)
    # an IDR capped 8 QP above the loop's CRF: the next P-frames start 4, 2, 1 above it
    controller = after_an_idr_of_ten_shares()
    controller.frame_encoded(round(3 * share_bits / 8), 60 / FPS, True, controller.crf + 8.0)
    raised = [controller.next_crf((61 + i) / FPS, False) - controller.crf for i in range(3)]
    assert raised == pytest.approx([4.0, 2.0, 1.0])


def test_the_idr_offset_makes_the_idr_smaller_and_leaves_p_frames_alone():
    from stac_encoder.robot_encoder import RobotEncoder

    frames = synthetic_clip(27)
    sizes = {}
    for extra in (0, 12):
        encoder = RobotEncoder(RobotEncoderConfig(warp_qp_map=False))
        packets = [
            encoder.encode(frame, index / FPS, idr_extra_qp=extra).packet
            for index, frame in enumerate(frames)
        ]
        sizes[extra] = [(p.keyframe, p.size_bytes) for p in packets]
    assert [k for k, _ in sizes[0]] == [k for k, _ in sizes[12]]
    idr_frames = [i for i, (keyframe, _) in enumerate(sizes[0]) if keyframe]
    assert len(idr_frames) >= 2  # the first picture and one gop later
    for index in idr_frames:
        assert sizes[12][index][1] < 0.7 * sizes[0][index][1]
    # on P-frames the offset does nothing: two encoders with the same IDR stay identical
    twins = [RobotEncoder(RobotEncoderConfig(warp_qp_map=False)) for _ in range(2)]
    p_sizes = []
    for twin, extra in zip(twins, (0, 12), strict=True):
        twin.encode(frames[0], 0.0)
        p_sizes.append([twin.encode(f, i / FPS, idr_extra_qp=extra).packet.size_bytes
                        for i, f in enumerate(frames[1:5], start=1)])  # fmt: skip
    assert p_sizes[0] == p_sizes[1]


def test_frames_kept_on_the_robot_are_accounted_for():
    from stac_eval.accounting import frame_accounting

    robot = {"frames_in": 100, "frames_encoded": 20, "frames_failed": 0, "frames_held": 80}
    edge = {"frames_in": 20, "frames_segmented": 20}
    accounting = frame_accounting(100, robot, edge)
    assert accounting["kept_on_robot"] == 80 and accounting["every_frame_accounted_for"]
