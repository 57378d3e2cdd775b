"""The kernel-emulated link is really between robot and edge: datagram loss shows up as
frames lost on the link, the edge asks for keyframes and recovers, and the accounting adds up.

Runs the installed nodes over Fast DDS through stac_eval.ros.graph_runner with a
stac_eval.kernel_link link (nftables loss on the robot <-> edge UDP ports). Needs root in a
private network namespace (scripts/test.sh runs pytest in one) and nft.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT

LOSS = 0.25  # of the datagrams each way: P(no frame of 30 lost) = 0.75^30 = 0.02%
# The clip looped for this long at 10 Hz: a slow edge on a loaded machine segments one frame
# in several, and a recovery needs a mask of a frame after a loss before the run ends.
PLAY_S = 8.0


def _private_namespace() -> bool:
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":")[0].strip() for line in lines] == ["lo"]


pytestmark = [
    pytest.mark.dds,
    pytest.mark.slow,
    pytest.mark.skipif(
        not _private_namespace(), reason="needs a private network namespace (scripts/test.sh)"
    ),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft (apt install nftables)"),
]


@pytest.fixture(scope="module")
def lossy_run(graph_clip, tmp_path_factory):
    from stac_eval.kernel_link import LinkSettings
    from stac_eval.ros.demo import summarise
    from stac_eval.ros.graph_runner import GraphRun, GraphRunConfig

    config = GraphRunConfig(
        video_uri=str(graph_clip),
        out_dir=tmp_path_factory.mktemp("lossy"),
        launch_dir=REPO_ROOT / "launch",
        pace="fixed",
        rate_hz=10.0,
        torch_threads=1,
        encoded_qos="best_effort",
        link=LinkSettings(loss=LOSS),
        play_duration_s=PLAY_S,
        record_bag=False,
        overlay_video=False,
    )
    result = GraphRun(config).run()
    return result, summarise(result, None, "test")


def test_loss_on_the_link_is_seen_and_accounted_for(lossy_run):
    result, report = lossy_run
    frames = report["frames"]
    assert result.link["dropped_datagrams"] > 0
    published = frames["published"]
    assert published >= 10 * PLAY_S - 2  # the player runs for PLAY_S at 10 Hz
    # How many are lost varies run to run: 23-27 of 83 in most runs, 47 in some (not
    # explained yet; frames sent before discovery, itself through the lossy link, matched the
    # edge are one suspect): the bound only says that frames also get through.
    assert 1 <= frames["lost_on_link"] < published, frames
    assert frames["every_frame_accounted_for"], frames


def test_the_edge_asks_for_keyframes_and_recovers(lossy_run):
    result, report = lossy_run
    frames = report["frames"]
    assert frames["keyframe_requests"] >= 1
    assert frames["keyframes"] >= 2  # the first one and at least one on request
    assert frames["segmented"] >= 1 and frames["recovery_ms_max"] > 0
    assert set(result.exit_codes.values()) == {0}
