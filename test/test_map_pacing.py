"""The map pacing rule (stac_sensitivity.map_pacing), which the sensitivity node and the replay
share: first frame at once, then period and camera-time interval, and the compute-share cap."""

from __future__ import annotations

import pytest

from stac_sensitivity.map_pacing import MAP_WORKER_NICE, MapPacer, MapPacingConfig, cpu_share
from stac_sensitivity.sensitivity_node import PARAMETERS


def _decode(pacer: MapPacer, frames: range) -> None:
    for frame_seq in frames:
        pacer.frame_decoded(frame_seq)


def test_defaults_are_the_sensitivity_nodes():
    node = {spec.name: spec.default for spec in PARAMETERS}
    config = MapPacingConfig()
    assert config.period_frames == node["period_frames"]
    assert config.min_map_interval_s == node["min_map_interval_s"]
    assert config.max_compute_share == node["max_compute_share"]


def test_first_frame_then_period_and_interval():
    pacer = MapPacer(MapPacingConfig(period_frames=5, min_map_interval_s=1.0))
    pacer.frame_decoded(1)
    assert pacer.wants(stamp_s=0.0, now_s=0.0)
    pacer.map_started(0.0)
    pacer.map_finished(0.0, 0.0)
    _decode(pacer, range(2, 6))  # 4 frames: period not reached
    assert not pacer.wants(stamp_s=2.0, now_s=2.0)
    pacer.frame_decoded(6)
    assert pacer.wants(stamp_s=2.0, now_s=2.0)
    assert not pacer.wants(stamp_s=0.5, now_s=2.0)  # under min_map_interval_s of camera time


def test_compute_share_cap_spaces_passes():
    pacer = MapPacer(
        MapPacingConfig(period_frames=1, min_map_interval_s=0.0, max_compute_share=0.25)
    )
    pacer.frame_decoded(1)
    pacer.map_started(0.0)
    pacer.map_finished(started_s=10.0, ended_s=10.2)  # 0.2 s: the next waits 0.6 s
    pacer.frame_decoded(2)
    assert not pacer.wants(stamp_s=1.0, now_s=10.79)
    assert pacer.wants(stamp_s=1.0, now_s=10.81)


def test_request_overrides_period_and_cap():
    pacer = MapPacer(MapPacingConfig(period_frames=0))
    pacer.frame_decoded(1)
    pacer.map_started(0.0)
    pacer.map_finished(0.0, 100.0)
    _decode(pacer, range(2, 50))
    assert not pacer.wants(stamp_s=9.0, now_s=101.0)  # period 0: on request only
    pacer.request()
    assert pacer.wants(stamp_s=9.0, now_s=101.0)


def test_restarted_numbering_and_clock():
    pacer = MapPacer(MapPacingConfig(period_frames=2, min_map_interval_s=1.0))
    assert not pacer.frame_decoded(10)
    pacer.map_started(50.0)
    pacer.map_finished(0.0, 0.0)
    assert pacer.frame_decoded(1)  # the robot restarted: the caller sends a key map
    pacer.frame_decoded(2)
    assert pacer.wants(stamp_s=0.1, now_s=0.0)  # camera clock went back: due


@pytest.mark.parametrize(
    "fields",
    [{"period_frames": -1}, {"min_map_interval_s": -0.1}, {"max_compute_share": 0.0}],
)
def test_bad_config_is_refused(fields):
    with pytest.raises(ValueError):
        MapPacingConfig(**fields)


def test_no_frame_is_due_while_a_pass_runs():
    pacer = MapPacer(
        MapPacingConfig(period_frames=1, min_map_interval_s=0.0, max_compute_share=1.0)
    )
    pacer.frame_decoded(1)
    pacer.map_started(0.0)
    pacer.request()
    _decode(pacer, range(2, 10))
    assert not pacer.wants(stamp_s=5.0, now_s=5.0)
    pacer.map_finished(0.0, 5.0)
    assert pacer.wants(stamp_s=5.0, now_s=5.0)


def test_cpu_share_follows_the_kernels_weights():
    assert cpu_share(0) == pytest.approx(0.5)
    assert cpu_share(MAP_WORKER_NICE) == pytest.approx(1 / (1 + 1.25**MAP_WORKER_NICE))
    assert 0.08 < cpu_share(10) < 0.11  # the map worker yields to segmentation
    assert cpu_share(19) < 0.02 and cpu_share(-5) > 0.7
    assert cpu_share(5, 5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="nice"):
        cpu_share(20)


def test_the_nodes_map_worker_nice_is_the_replays():
    from stac_sensitivity.edge_container import PARAMETERS as CONTAINER

    for parameters in (PARAMETERS, CONTAINER):
        spec = {spec.name: spec for spec in parameters}["map_worker_nice"]
        assert spec.default == MAP_WORKER_NICE
