"""stac_eval.bitflip: single-bit flips over real encoded frames never come out of the edge's
decoder as a good picture (a small version of what `stac-bench faults` reports)."""

from __future__ import annotations

import pytest

from stac_eval.bitflip import bitflip_sweep, clip_frames, encode_clip, sweep_video

FRAMES, WIDTH, HEIGHT, GOP = 24, 160, 96, 8


@pytest.fixture(scope="module")
def clip():
    return encode_clip(clip_frames(FRAMES, WIDTH, HEIGHT), gop_frames=GOP)


@pytest.mark.slow
def test_no_flip_passes_as_decoded_and_every_stream_recovers(clip):
    report = bitflip_sweep(clip, flips=160, seed=1)
    assert report["flips"] == 160 and report["frames"] == FRAMES
    assert report["keyframe_indices"] == list(range(0, FRAMES, GOP))
    assert report["exceptions"] == {}
    assert report["corrupt_passed_as_decoded"] == 0, report
    assert report["bad_pictures_passed"] == 0
    assert report["not_recovered"] == 0
    assert sum(report["flips_by_region"].values()) == 160
    assert report["flips_by_region"].get("p_slice_data", 0) > 80
    assert sum(report["caught_by"].values()) == 160  # every flip stopped somewhere


def test_header_flips_without_the_checksum_never_raise(clip):
    """Without the in-band CRC only the syntax checks and FFmpeg stand guard: flips in
    parameter sets, NAL and slice headers must still never raise, and the rare flips that
    stay valid syntax (colour description, slice QP) are the only ones that may pass."""
    plain = encode_clip(clip_frames(FRAMES, WIDTH, HEIGHT), gop_frames=GOP, checksum_sei=False)
    report = bitflip_sweep(plain, flips=120, seed=2, targets="headers")
    assert report["exceptions"] == {}
    assert report["not_recovered"] == 0
    assert report["corrupt_passed_as_decoded"] <= 6, report
    assert any(kind.startswith("bad access unit") for kind in report["caught_by"])


def test_sweep_arguments_are_checked(clip):
    with pytest.raises(ValueError, match="targets"):
        bitflip_sweep(clip, flips=1, targets="everything")


def test_the_one_call_form_names_its_clip():
    report = sweep_video(frames=6, width=64, height=48, gop_frames=3, flips=12)
    assert report["video"] == "synthetic" and report["checksum_sei"] is True
    assert report["flips"] == 12 and report["corrupt_passed_as_decoded"] == 0
