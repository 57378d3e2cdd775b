"""The replay's event simulator (the one behind `stac-replay run` and `stac-bench temporal`),
with a stand-in model and map computer (no torch), on a short panning clip: what travels in
each mode and method, every byte both ways, what the robot holds warped and held, and the
bitrate target's window check."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from stac_codec.qp_map import QPLevelMap, macroblock_grid
from stac_encoder.keyframes import KeyframeConfig
from stac_eval.baselines import jpeg_round_trip
from stac_eval.replay.accounting import KEPT, PointResult
from stac_eval.replay.edge_profile import EdgeTiming
from stac_eval.replay.link import LinkConfig
from stac_eval.replay.simulation import METHODS, PointReplay, ReplaySettings
from stac_eval.replay.truth import write_atomically
from stac_eval.replay.wire import (
    compressed_image_bytes,
    keyframe_request_bytes,
    segmentation_mask_bytes,
)
from stac_eval.temporal_maps import window_errors

WIDTH, HEIGHT, FRAMES, FPS = 128, 80, 30, 25.0


def _classes(image: np.ndarray) -> np.ndarray:
    """Class 1 where the frame is bright, else 0."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return (grey > 128).astype(np.uint8)


class StubModel:
    num_classes = 3
    palette = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]], np.uint8)

    def predict(self, images, batch_size=1, with_probabilities=False):
        images = np.asarray(images)
        batch = images[None] if images.ndim == 3 else images
        return SimpleNamespace(class_ids=np.stack([_classes(image) for image in batch]))


class StubComputer:
    """A fixed map: the left half finer; remembers the (frame, reference) pairs it was given."""

    aq_strength = 0.001
    max_offset_qp = 6

    def __init__(self):
        self.given = []

    def compute(self, image, reference=None):
        self.given.append((image, reference))
        rows, cols = macroblock_grid(image.shape[1], image.shape[0])
        indices = np.zeros((rows, cols), np.uint8)
        indices[:, cols // 2 :] = 2
        level_map = QPLevelMap(indices, (-6, 0, 6))
        return SimpleNamespace(
            allocation=level_map,
            offsets_qp=level_map.offsets_qp,
            class_ids=_classes(image),
            macroblock_sensitivity=np.ones((rows, cols)),
        )


class StubTruth:
    def __init__(self, frames):
        self._masks = [_classes(f.image) for f in frames]

    def mask(self, index):
        return self._masks[index]


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(4)
    noise = rng.integers(0, 256, (HEIGHT, WIDTH + 2 * FRAMES, 3)).astype(np.float32)
    world = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3.0), None, 0, 255, cv2.NORM_MINMAX)
    return [
        SimpleNamespace(
            index=i,
            offset_s=i / FPS,
            image=np.ascontiguousarray(world[:, 2 * i : 2 * i + WIDTH]).astype(np.uint8),
        )
        for i in range(FRAMES)
    ]


def simulate(clip, method: str, budget=30.0, computer=None, link="rate=10mbit,delay=10ms",
             timing=(100.0, 200.0), **settings) -> PointResult:  # fmt: skip
    simulation = PointReplay(
        METHODS[method],
        budget,
        ReplaySettings(fps=FPS, **settings),
        LinkConfig.parse(link),
        EdgeTiming(*timing),
        StubModel(),
        computer or StubComputer(),
        StubTruth(clip),
    )
    return simulation.run(clip)


def _miou(point, kind):
    from stac_edge_segmenter.metrics import mean_iou

    return mean_iou(point.confusion[kind].sum(0))


def test_stream_mode_sends_every_frame_and_counts_every_message_back(clip):
    computer = StubComputer()
    # A saturated 100 ms segmenter leaves a map worker at nice 10 a tenth of the cores: 20 ms
    # passes.
    point = simulate(
        clip, "stac", computer=computer, timing=(100.0, 20.0), min_map_interval_s=0.2,
        map_worker_nice=10,
    )  # fmt: skip
    # the first map comes from the stream's first picture; every later one is given the
    # decoded picture before its frame, the reference of that P-frame (the decoder's
    # reference_image, tested in test_codec_decoder.py)
    assert computer.given[0][1] is None and len(computer.given) >= 2
    for image, reference in computer.given[1:]:
        assert reference is not None and reference.shape == image.shape
        assert not np.array_equal(reference, image)  # the camera pans: another picture
    assert point.sent.all() and point.uplink_bytes.min() > 0
    assert point.counters["maps_sent"] >= 1 and point.map_bytes.sum() > 0
    # one SegmentationMask per segmented frame, charged to that frame, apart from the maps
    segmented = point.segmented
    assert point.counters["masks_sent"] == segmented.sum() > 0
    assert (point.mask_bytes[segmented] > segmentation_mask_bytes(0)).all()
    assert (point.mask_bytes[~segmented] == 0).all()
    assert point.counters["skipped"] > 0  # the newest-frame policy under a 100 ms edge
    np.testing.assert_array_equal(
        point.downlink_bytes, point.map_bytes + point.mask_bytes + point.request_bytes
    )
    assert (point.mask_age[:3] == -1).all() and (point.mask_age[-10:] >= 0).all()
    assert point.confusion["decoded_pseudo"].sum() > 0
    held = point.confusion["timely_pseudo"][-10:].sum(0)
    assert np.trace(held[:, :3]) / held.sum() > 0.8  # the robot's masks fit the frames


def test_segmentation_never_waits_for_a_map_pass(clip):
    """The map worker runs beside the segmenter's: with 0.2-s map passes every frame is still
    segmented, its mask back at most one forward later than without maps (the two share the
    cores while a pass runs); a map pass in the segmenter's worker would hold it for 0.2 s."""
    fast_link = "rate=10gbit,delay=10ms"
    stac = simulate(
        clip, "stac", timing=(15.0, 200.0), link=fast_link, min_map_interval_s=0.2,
        max_compute_share=1.0,
    )  # fmt: skip
    plain = simulate(clip, "uniform", timing=(15.0, 200.0), link=fast_link)
    assert stac.counters["maps_sent"] >= 2
    assert stac.segmented.all() and plain.segmented.all()
    late_s = stac.mask_arrival_s - plain.mask_arrival_s
    assert 0 < np.nanmax(late_s) <= 0.015 + 1e-3


def test_a_saturated_segmenter_leaves_maps_only_what_it_does_not_use(clip):
    """At the default nice (19) a map pass beside a segmenter that never idles gets ~1.4 % of
    the core: fewer maps than at nice 10 (~10 %), which slows them but does not stop them,
    and far fewer than beside an idle segmenter."""
    maps = {"min_map_interval_s": 0.0, "period_frames": 1}
    starved = simulate(clip, "stac", timing=(100.0, 50.0), **maps)
    slow = simulate(clip, "stac", timing=(100.0, 50.0), map_worker_nice=10, **maps)
    idle = simulate(clip, "stac", timing=(10.0, 50.0), **maps)
    assert starved.counters["maps_sent"] < slow.counters["maps_sent"]
    assert 2 <= slow.counters["maps_sent"] < idle.counters["maps_sent"]


def test_keyframe_mode_sends_only_keyframes_never_to_a_busy_edge(clip):
    point = simulate(clip, "stac_keyframe")
    sent = np.flatnonzero(point.sent)
    assert 1 <= len(sent) < FRAMES // 2
    assert (point.status[~point.sent] == KEPT).all()
    # the edge answers each keyframe within ~0.1-0.2 s (+ link): never two within 3 frames
    assert (np.diff(sent) >= 3).all()
    assert (point.mask_age[sent[0] + 10 :] >= 0).all()
    # every keyframe is segmented and its mask (only its) goes back
    assert point.segmented[sent].all() and not point.segmented[~point.sent].any()
    assert (point.mask_bytes[sent] > 0).all() and (point.mask_bytes[~point.sent] == 0).all()
    assert point.uplink_bytes[~point.sent].sum() == 0


def test_uniform_keyframe_is_keyframe_mode_without_maps(clip):
    computer = StubComputer()
    point = simulate(clip, "uniform_keyframe", computer=computer)
    assert not computer.given and point.map_bytes.sum() == 0
    assert 1 <= point.sent.sum() < FRAMES // 2


def test_the_streaming_baselines_send_every_frame_to_the_same_robot(clip):
    """x264_aq: uniform's stream mode, robot and masks back, with x264's variance AQ (other
    pictures, other bytes) and no map; two_level: maps back too, charged to their frames."""
    uniform = simulate(clip, "uniform")
    aq = simulate(clip, "x264_aq")
    two_level = simulate(clip, "two_level", timing=(100.0, 20.0), min_map_interval_s=0.2)
    for point in (aq, two_level):
        assert point.sent.all() and point.uplink_bytes.min() > 0
        assert point.counters["masks_sent"] == point.segmented.sum() > 0
        assert (point.mask_bytes[point.segmented] > segmentation_mask_bytes(0)).all()
        assert (point.mask_age[-10:] >= 0).all()  # masks warped to every frame
    assert aq.map_bytes.sum() == 0 and aq.counters["maps_sent"] == 0
    assert not np.array_equal(aq.uplink_bytes, uniform.uplink_bytes)
    assert two_level.counters["maps_sent"] >= 1 and two_level.map_bytes.sum() > 0
    np.testing.assert_array_equal(
        two_level.downlink_bytes,
        two_level.map_bytes + two_level.mask_bytes + two_level.request_bytes,
    )


def test_curves_count_bits_both_ways_or_uplink_only_and_score_either_robot(clip):
    """What a BD-rate compares: total bits are the uplink plus every message back (maps, masks,
    keyframe requests) per frame, uplink only leaves the way back out; the accuracy is the
    warped or the held mask's timely mIoU of the same run."""
    from stac_edge_segmenter.metrics import mean_iou
    from stac_eval.replay.analysis import TOTAL, UPLINK, BlockBootstrap, Curve, point_summary

    points = [
        simulate(clip, "stac_keyframe", budget=crf, link="rate=10mbit,delay=10ms,loss=10%,seed=2")
        for crf in (20.0, 30.0, 40.0)
    ]
    assert sum(p.map_bytes.sum() > 0 for p in points) and all(p.mask_bytes.sum() for p in points)
    curves = {"stac_keyframe": Curve("stac_keyframe", "crf", points)}
    both_ways = ("uplink_bytes", "map_bytes", "mask_bytes", "request_bytes")
    for parts, columns in ((TOTAL, both_ways), (UPLINK, ("uplink_bytes",))):
        for kind in ("timely_pseudo", "timely_held_pseudo"):
            rates, mious = BlockBootstrap(curves, kind, 7, parts).curve("stac_keyframe")
            expected = [sum(getattr(p, c).sum() for c in columns) / FRAMES for p in points]
            np.testing.assert_allclose(rates, expected)
            np.testing.assert_allclose(mious, [mean_iou(p.confusion[kind].sum(0)) for p in points])
    for point in points:
        warp, held = point_summary(point, FPS, "warp"), point_summary(point, FPS, "held")
        kbit = 8 * FPS / FRAMES / 1e3
        assert warp["total_kbps"] == pytest.approx(
            kbit * sum(getattr(point, c).sum() for c in both_ways), abs=1e-3
        )
        assert warp["downlink_kbps"] > 0 and warp["uplink_kbps"] > 0
        assert warp["timely_miou"] == warp["timely_miou_warp"] == held["timely_miou_warp"]
        assert held["timely_miou"] == held["timely_miou_held"] == warp["timely_miou_held"]
        assert held["total_kbps"] == warp["total_kbps"]


def test_jpeg_counts_each_compressed_image_and_has_the_same_robot(clip):
    point = simulate(clip, "jpeg", budget=50)
    expected = [compressed_image_bytes(jpeg_round_trip(f.image, 50)[1]) for f in clip]
    np.testing.assert_array_equal(point.uplink_bytes, expected)
    assert point.map_bytes.sum() == 0 and point.mask_bytes.sum() > 0
    assert (point.mask_age[-10:] >= 0).all()  # masks warped to every frame, as with H.264


def test_a_lost_frame_costs_a_keyframe_request_counted_on_the_downlink(clip):
    point = simulate(clip, "uniform", link="rate=10mbit,delay=10ms,loss=15%,seed=3")
    requests = point.counters["keyframe_requests"]
    assert requests >= 1
    assert point.request_bytes.sum() == requests * keyframe_request_bytes()
    assert point.counters["keyframes"] >= 2  # the robot answered with an IDR


def test_the_warping_robot_beats_holding_on_a_pan_and_both_come_from_one_run(clip):
    point = simulate(clip, "uniform", timing=(200.0, 200.0))
    warped, held = _miou(point, "timely_pseudo"), _miou(point, "timely_held_pseudo")
    assert warped > held
    after = np.flatnonzero(point.held_frame >= 0)
    assert len(after) and (point.held_frame[after] < after).all()  # a mask of an older frame


def test_the_simulation_is_deterministic(clip):
    first, second = simulate(clip, "stac"), simulate(clip, "stac")
    for name, values in first.arrays.items():
        np.testing.assert_array_equal(values, second.arrays[name], err_msg=name)
    for kind, values in first.confusion.items():
        np.testing.assert_array_equal(values, second.confusion[kind], err_msg=kind)
    assert first.counters == second.counters


def test_window_errors_of_a_perfect_and_of_a_lagging_stream():
    fps, target = 10.0, 80.0
    per_frame = target * 1e3 / 8 / fps  # bytes per frame on target
    sizes = np.full(100, per_frame)
    sizes[50:] = per_frame / 2
    perfect = window_errors(sizes, fps, (target, target / 2), 5.0)
    assert perfect["worst_window_error_pct"] < 1e-6 and perfect["step_settle_s"] == 0.0
    lagging = sizes.copy()
    lagging[50:60] = per_frame  # follows the step one second late
    late = window_errors(lagging, fps, (target, target / 2), 5.0)
    assert late["step_settle_s"] == pytest.approx(1.0, abs=0.11)


def test_edge_profiles_fast_from_the_h200_or_published_figures_and_a_measured_file(tmp_path):
    import json

    from stac_edge_segmenter.loading import DEFAULT_CONFIG, read_spec
    from stac_eval.replay.edge_profile import (
        FAST_BATCH1_MS_224,
        H200_SHIPPED_MODEL_MS,
        TIMING_FORMAT,
        fast_edge_timing,
        timing_from_file,
    )

    shipped = read_spec(DEFAULT_CONFIG)

    def model(input_size, weights=Path("elsewhere.pt")):
        return SimpleNamespace(spec=SimpleNamespace(input_size=input_size, weights=weights))

    # the shipped model: the H200 measurement at the clip's size, or the nearest in pixels
    dashcam = fast_edge_timing(model((480, 360), shipped.weights), 960, 540)
    assert (dashcam.segment_ms, dashcam.map_ms) == H200_SHIPPED_MODEL_MS[(960, 540)]
    assert dashcam.profile == "fast" and "H200" in dashcam.source
    assert "nearest" not in dashcam.source
    vtest = fast_edge_timing(model((480, 360), shipped.weights), 768, 576)
    assert (vtest.segment_ms, vtest.map_ms) == H200_SHIPPED_MODEL_MS[(768, 576)]
    full_hd = fast_edge_timing(model((480, 360), shipped.weights), 1920, 1080)
    assert (full_hd.segment_ms, full_hd.map_ms) == H200_SHIPPED_MODEL_MS[(960, 540)]
    assert "nearest in pixels to this 1920x1080" in full_hd.source
    # any other model: published figures, labelled as such
    working = fast_edge_timing(model((480, 360)), 960, 540)
    assert working.profile == "fast" and "not measured" in working.source
    assert FAST_BATCH1_MS_224 < working.segment_ms < working.map_ms
    # the network sees its working resolution, whatever the frame size
    assert fast_edge_timing(model((480, 360)), 768, 576) == working
    native = fast_edge_timing(model(None), 960, 540)  # a model that runs at the frame's size
    assert native.segment_ms > working.segment_ms
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"format": TIMING_FORMAT, "segment_ms": 4.0, "map_ms": 11.5}))
    measured = timing_from_file(path)
    assert (measured.segment_ms, measured.map_ms, measured.profile) == (4.0, 11.5, "measured")
    path.write_text("{}")
    with pytest.raises(ValueError, match="format"):
        timing_from_file(path)


def test_map_aq_strength_puts_every_map_method_on_x264s_aq_from_the_first_frame(clip):
    class AQComputer(StubComputer):
        aq_strength = 1.0  # a calibration that asks for x264's AQ under its maps

    # the 100-ms segmenter is never idle in this 1.2-s clip: the map worker at an equal share
    # (nice 0) so that maps come back in it (at the default nice 19 a pass takes ~7 s)
    maps = {"min_map_interval_s": 0.2, "map_worker_nice": 0}
    # at 0 the calibration's strength reaches the robot with the first map: computed per frame
    # where the AQ fades with the camera's motion (the default), else a re-opened encoder
    # (an IDR)
    asked = simulate(clip, "stac", computer=AQComputer(), map_aq_strength=0.0, **maps)
    assert asked.counters["maps_applied"] >= 1 and asked.idr.sum() == 1
    x264_own = (("aq_motion_fade_px", 0.0),)
    reopened = simulate(
        clip, "stac", computer=AQComputer(), map_aq_strength=0.0, robot_options=x264_own, **maps
    )
    assert reopened.counters["maps_applied"] >= 1 and reopened.idr.sum() == 2
    assert not np.array_equal(
        asked.uplink_bytes[1:], simulate(clip, "stac", **maps).uplink_bytes[1:]
    )
    # the setting starts every map method's robot at it, and its maps ask for the same
    for method in ("stac", "two_level"):
        on_aq = simulate(clip, method, map_aq_strength=1.0, **maps)
        map_only = simulate(clip, method, map_aq_strength=0.0, **maps)
        assert on_aq.counters["maps_applied"] >= 1 and on_aq.idr.sum() == 1
        assert not np.array_equal(on_aq.uplink_bytes, map_only.uplink_bytes)
    # methods without maps keep their own strength
    np.testing.assert_array_equal(
        simulate(clip, "uniform", map_aq_strength=1.0).uplink_bytes,
        simulate(clip, "uniform").uplink_bytes,
    )
    with pytest.raises(ValueError, match="map_aq_strength"):
        ReplaySettings(fps=FPS, map_aq_strength=-1.0)
    with pytest.raises(ValueError, match="map_worker_nice"):
        ReplaySettings(fps=FPS, map_worker_nice=-5)


def test_robot_options_act_on_every_map_method_and_leave_the_others_alone(clip):
    """robot_options (forced skips, reference-aware offsets) reach the robot of every map
    method and change its stream once maps arrive; a method without maps is unchanged."""
    # the maps as the edge sent them: faded (map_fade_px) on this panning clip, no offset
    # reaches hold_offset_qp and forced skips would hold nothing
    maps = {"min_map_interval_s": 0.2, "map_worker_nice": 0, "map_fade_px": 0.0}
    levers = (("hold_offset_qp", 6), ("reference_qp_strength", 1.0))
    for method in ("stac", "two_level"):
        plain = simulate(clip, method, **maps)
        for option in levers:
            tried = simulate(clip, method, robot_options=(option,), **maps)
            assert tried.counters["maps_applied"] >= 1
            assert not np.array_equal(tried.uplink_bytes, plain.uplink_bytes), (method, option)
    np.testing.assert_array_equal(
        simulate(clip, "uniform", robot_options=levers).uplink_bytes,
        simulate(clip, "uniform").uplink_bytes,
    )


def test_a_robot_option_wins_over_the_setting_of_the_same_name(clip):
    """robot_options may name a RobotEncoderConfig field the replay also sets (map_fade_px,
    the offset scales): the option wins, as a tried setting must."""
    maps = {"min_map_interval_s": 0.2, "map_worker_nice": 0}
    by_option = simulate(clip, "stac", robot_options=(("map_fade_px", 0.0),), **maps)
    by_setting = simulate(clip, "stac", map_fade_px=0.0, **maps)
    assert by_option.counters["maps_applied"] >= 1
    np.testing.assert_array_equal(by_option.uplink_bytes, by_setting.uplink_bytes)


def test_a_frame_enters_the_uplink_when_the_robot_has_encoded_it_and_the_frames_before(clip):
    at_capture = simulate(clip, "uniform", timing=(25.0, 25.0))
    np.testing.assert_allclose(at_capture.encoded_s, at_capture.capture_s)
    # 30 ms a frame: within the 40-ms frame interval, every frame 30 ms later
    encoding = simulate(clip, "uniform", timing=(25.0, 25.0), robot_encode_ms=(30.0, 90.0))
    np.testing.assert_allclose(encoding.encoded_s - encoding.capture_s, 0.030)
    back = np.isfinite(at_capture.mask_arrival_s) & np.isfinite(encoding.mask_arrival_s)
    assert back.sum() > 10
    delays = encoding.mask_arrival_s[back] - at_capture.mask_arrival_s[back]
    assert np.median(delays) == pytest.approx(0.030, abs=1e-6)
    # 50 ms a frame: the robot falls behind the camera, each frame waits for the one before
    behind = simulate(clip, "uniform", timing=(25.0, 25.0), robot_encode_ms=(50.0, 50.0))
    np.testing.assert_allclose(np.diff(behind.encoded_s), 0.050)
    # keyframe mode: a keyframe 4+ frames after the one before takes the far figure
    keyframes = simulate(
        clip, "uniform_keyframe", timing=(25.0, 25.0), robot_encode_ms=(10.0, 90.0),
        keyframes=KeyframeConfig(max_interval_frames=5, stale_psnr_db=5.0),
    )  # fmt: skip
    sent = np.flatnonzero(keyframes.sent)
    waits = np.round(1e3 * (keyframes.encoded_s - keyframes.capture_s)[sent])
    far = np.diff(sent, prepend=-100) >= KeyframeConfig.far_gap_frames
    assert far[1:].any()
    np.testing.assert_array_equal(waits, np.where(far & (sent > 0), 90.0, 10.0))


def test_near_keyframes_take_the_far_preset_where_its_time_delays_no_mask(clip):
    """FarWhenFree in the replay: masks back 12 ms after a near keyframe's capture (the
    robot holds them at the next camera frame, 40 ms): a far keyframe that takes 10 ms more
    is free and near keyframes take it; one that takes 60 ms more, over a 40-ms frame
    interval, cannot be and is never tried."""

    def far_share(far_ms: float) -> float:
        point = simulate(
            clip, "uniform_keyframe", link="rate=100mbit,delay=1ms", timing=(5.0, 5.0),
            robot_encode_ms=(5.0, far_ms),
            keyframes=KeyframeConfig(max_interval_frames=2, stale_psnr_db=5.0),
        )  # fmt: skip
        return point.counters["far_encoded"] / point.counters["sent"]

    assert far_share(15.0) > 0.8
    assert far_share(65.0) == 0.0


def test_lateness_breakdown_adds_up_to_capture_to_held_and_matches_the_robots_mask_age(clip):
    from stac_eval.replay.analysis import lateness_breakdown

    link = LinkConfig.parse("rate=2mbit,delay=30ms")
    point = simulate(
        clip, "uniform", link="rate=2mbit,delay=30ms", timing=(25.0, 25.0),
        robot_encode_ms=(12.0, 12.0),
    )  # fmt: skip
    result = lateness_breakdown(point, link, 25.0)
    stages = result["stages_ms"]
    assert stages["robot_encode"]["mean"] == pytest.approx(12.0)
    assert result["frames_with_mask_back"] == int(np.isfinite(point.mask_arrival_s).sum()) > 0
    assert stages["uplink_delay"]["mean"] == stages["downlink_delay"]["mean"] == 30.0
    assert stages["forward"]["mean"] == 25.0
    # serialisation is each frame's message at 2 Mbit/s
    back = np.isfinite(point.mask_arrival_s)
    expected = 1e3 * 8.0 * point.uplink_bytes[back].mean() / 2e6
    assert stages["uplink_serialisation"]["mean"] == pytest.approx(expected, abs=0.01)
    assert min(stage["mean"] for stage in stages.values()) >= -1e-6
    # the stages add up to the time from capture to the mask first held (frames whose mask
    # is held before the clip ends)
    total = sum(stage["mean"] for stage in stages.values())
    assert result["capture_to_held_ms"]["mean"] == pytest.approx(total, abs=0.5)
    # a 40-ms frame interval and more than 85 ms to come back: masks are at least 3 frames old
    assert min(result["held_age_frames"]) >= 3
    ages = point.mask_age[point.mask_age >= 0]
    assert sum(entry["frames"] for entry in result["timely_by_age"].values()) == len(ages)
    assert min(result["timely_by_age"]) == ages.min() >= 3


def test_robot_timing_given_or_measured_once_and_cached(clip, tmp_path):
    from stac_eval.replay.robot_timing import RobotTiming, measured_robot_timing

    given = RobotTiming.parse("12.5/40")
    assert (given.near_ms, given.far_ms, given.encode_s(True)) == (12.5, 40.0, 0.04)
    assert RobotTiming.parse("7").far_ms == 7.0
    for bad in ("fast", "1/2/3", "-1", "nan"):
        with pytest.raises(ValueError):
            RobotTiming.parse(bad)
    images = [frame.image for frame in clip]
    size = images[0].shape[1::-1]
    loads = []

    def load_frames(count: int) -> list:
        loads.append(count)
        return images[:count]

    measured = measured_robot_timing(tmp_path, size, load_frames, "veryfast", "medium", 2)
    assert measured.source.startswith("measured now")
    assert measured.near_ms > 0 and measured.far_ms > 0
    assert measured.measurement["far_preset"] == "medium"
    assert len(loads) == 1
    again = measured_robot_timing(tmp_path, size, load_frames, "veryfast", "medium", 2)
    assert len(loads) == 1  # the cache answered before any frame was read
    assert again.source.startswith("measured, cached")
    assert (again.near_ms, again.far_ms) == (measured.near_ms, measured.far_ms)


def test_cache_files_survive_runs_writing_them_at_once(tmp_path):
    """Two replays sharing the cache write the same decoded mask at the same time (each its
    own temporary file); the file is always one whole payload."""
    path, errors = tmp_path / "mask.png", []

    def write(payload: bytes) -> None:
        try:
            for _ in range(300):
                write_atomically(path, payload)
        except OSError as error:
            errors.append(error)

    payloads = [bytes([value]) * 4096 for value in (1, 2)]
    threads = [threading.Thread(target=write, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]
