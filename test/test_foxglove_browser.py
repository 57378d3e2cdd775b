"""The bag's /stac/video channel plays in a real browser the way Foxglove and Lichtblick play it.

Those viewers decode foxglove_msgs/msg/CompressedVideo with the browser's WebCodecs
`VideoDecoder`: one `EncodedVideoChunk` per message, "key" when the message holds an IDR,
codec string "avc1.PPCCLL" from the SPS, no out-of-band description (Annex B). Here Debian's
`chromium`, headless, does exactly that with every message of the channel, and a check fails
when a chunk is refused, the decoder reports an error, or the decoded frames differ from the
messages in number, order or size.

The page and the data are served from 127.0.0.1 only (WebCodecs needs a secure context, and
http://127.0.0.1 is one). `--dump-dom` prints the DOM once the page has loaded, so the page
holds its load event open with an image request (/hold) that the server answers only after
the page has posted its results (decoding is asynchronous; `--virtual-time-budget` stalls it).

Two streams: ~30 frames from QPMapEncoder with a QP map and a keyframe forced in the middle,
written through stac_eval.foxglove_video into a small mcap with rosbags (fast, no ROS graph),
also played from the forced keyframe on as a seeking viewer would; and the edge's live
`video` topic of the real graph run shared with test_graph_e2e.py (conftest.graph_run), as
its recorder wrote it into the bag. Negative controls (a keyframe
without SPS/PPS, two frames in one message) show that the browser check does fail.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from conftest import GRAPH_FRAME_SIZE, GRAPH_FRAMES
from stac_codec.annexb import NAL_TYPE_PPS, NAL_TYPE_SPS, split_nal_units
from stac_codec.h264_encoder import EncoderConfig, QPMapEncoder
from stac_codec.qp_map import macroblock_grid
from stac_eval.foxglove_video import (
    COMPRESSED_VIDEO_TYPE,
    H264_FORMAT,
    VIDEO_TOPIC,
    check_access_unit,
    compressed_video_cdr,
    register_compressed_video,
)
from stac_eval.ros.recorder_node import stac_typestore

CHROMIUM_NAMES = ("chromium", "chromium-browser")
BROWSER_TIMEOUT_S = 90.0
ENCODER_FRAMES = 30
ENCODER_SIZE = (320, 180)  # 180 is not a multiple of 16: the SPS carries a cropping window

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>WebCodecs check</title></head>
<body><pre id="result">pending</pre>
<script>
async function decodeStream(stream, bytes) {
  const out = {name: stream.name, codec: stream.codec, chunks: stream.chunks.length,
               decoded: 0, errors: [], timestamps: [], sizes: []};
  const config = {codec: stream.codec, optimizeForLatency: true};
  const support = await VideoDecoder.isConfigSupported(config);
  out.supported = support.supported;
  if (!support.supported) {
    out.errors.push('VideoDecoder does not support ' + stream.codec);
    return out;
  }
  const decoder = new VideoDecoder({
    output: (frame) => {
      out.decoded += 1;
      out.timestamps.push(frame.timestamp);
      const size = frame.displayWidth + 'x' + frame.displayHeight;
      if (!out.sizes.includes(size)) out.sizes.push(size);
      frame.close();
    },
    error: (e) => { out.errors.push('decoder error: ' + e.name + ': ' + e.message); },
  });
  decoder.configure(config);
  for (const [index, chunk] of stream.chunks.entries()) {
    try {
      decoder.decode(new EncodedVideoChunk({
        type: chunk.key ? 'key' : 'delta',
        timestamp: chunk.timestamp_us,
        data: bytes.subarray(chunk.offset, chunk.offset + chunk.length),
      }));
    } catch (e) {
      out.errors.push('chunk ' + index + ' refused: ' + e.name + ': ' + e.message);
      break;
    }
  }
  try {
    await decoder.flush();
  } catch (e) {
    out.errors.push('flush: ' + e.name + ': ' + e.message);
  }
  if (decoder.state !== 'closed') decoder.close();
  return out;
}
async function main() {
  const result = {secure_context: window.isSecureContext,
                  webcodecs: typeof VideoDecoder === 'function', streams: []};
  try {
    if (!result.webcodecs) throw new Error('this browser has no WebCodecs VideoDecoder');
    const manifest = await (await fetch('manifest.json')).json();
    const bytes = new Uint8Array(await (await fetch('frames.bin')).arrayBuffer());
    for (const stream of manifest.streams) result.streams.push(await decodeStream(stream, bytes));
  } catch (e) {
    result.error = String(e);
  }
  document.getElementById('result').textContent = JSON.stringify(result);
  await fetch('done', {method: 'POST', body: 'done'});
}
main();
</script>
<img src="hold" alt="">
</body></html>
"""


@dataclass(frozen=True)
class Chunk:
    """One CompressedVideo message as a viewer hands it to WebCodecs."""

    data: bytes
    key: bool
    timestamp_us: int


@dataclass(frozen=True)
class Stream:
    """The chunks of one channel and the codec string a viewer configures the decoder with."""

    name: str
    codec: str
    chunks: list[Chunk]


def stamp_ns(stamp) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def stream_from_messages(name: str, messages: list) -> Stream:
    """CompressedVideo messages -> chunks, as Foxglove/Lichtblick do it: "key" where the message
    holds an IDR, the codec string from the first SPS, timestamps relative to the first."""
    assert messages, f"{name}: no messages"
    chunks, codec = [], None
    first_ns = stamp_ns(messages[0].timestamp)
    for index, message in enumerate(messages):
        assert message.format == H264_FORMAT, f"{name}: message {index} format {message.format}"
        data = bytes(message.data)
        info = check_access_unit(data)
        codec = codec or info.codec
        chunks.append(Chunk(data, info.keyframe, (stamp_ns(message.timestamp) - first_ns) // 1000))
    assert codec is not None, f"{name}: no SPS in any message"
    return Stream(name, codec, chunks)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (scripts/test.sh installs it); skip only when there is none at all."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no chromium on PATH (scripts/test.sh installs Debian's `chromium` with apt); "
        "the WebCodecs playback check needs a real browser"
    )


class _PageServer(http.server.ThreadingHTTPServer):
    """Serves `directory` on 127.0.0.1 (an ephemeral port), holds /hold until a POST."""

    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        self.done = threading.Event()
        self.requests: list[str] = []
        handler = functools.partial(_PageHandler, directory=str(directory))
        super().__init__(("127.0.0.1", 0), handler)


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    server: _PageServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.requests.append(format % args)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/hold":  # answered once the page has posted its results
            self.server.done.wait(BROWSER_TIMEOUT_S)
            self.send_response(204)
            self.end_headers()
            return
        super().do_GET()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(204)
        self.end_headers()
        self.server.done.set()


def decode_in_chromium(chromium: str, streams: list[Stream], work_dir: Path) -> dict:
    """Serve the page and the streams on 127.0.0.1, let headless chromium decode them with
    WebCodecs, and return the page's result (per stream: chunks, decoded, errors, output
    timestamps and sizes)."""
    site = work_dir / "site"
    site.mkdir()
    manifest, blob, offset = {"streams": []}, bytearray(), 0
    for stream in streams:
        entries = []
        for chunk in stream.chunks:
            entries.append(
                {
                    "offset": offset,
                    "length": len(chunk.data),
                    "key": chunk.key,
                    "timestamp_us": chunk.timestamp_us,
                }
            )
            blob += chunk.data
            offset += len(chunk.data)
        manifest["streams"].append({"name": stream.name, "codec": stream.codec, "chunks": entries})
    (site / "index.html").write_text(PAGE)
    (site / "manifest.json").write_text(json.dumps(manifest))
    (site / "frames.bin").write_bytes(bytes(blob))

    server = _PageServer(site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={work_dir / 'profile'}",
        f"--timeout={int(BROWSER_TIMEOUT_S * 1000)}",
        "--dump-dom",
        url,
    ]
    started = time.monotonic()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S + 60
        )
    finally:
        server.done.set()
        server.shutdown()
        server.server_close()
    elapsed_s = time.monotonic() - started
    found = re.search(r'<pre id="result">(.*?)</pre>', completed.stdout, re.DOTALL)
    context = (
        f"chromium exited {completed.returncode} after {elapsed_s:.1f} s; "
        f"requests: {server.requests}; stderr tail:\n{completed.stderr[-2000:]}"
    )
    assert found, f"no result element in chromium's DOM dump; {context}"
    text = html.unescape(found.group(1))
    assert text != "pending", f"the page did not finish decoding; {context}"
    result = json.loads(text)
    assert result["secure_context"], "the page was not a secure context (WebCodecs needs one)"
    assert "error" not in result, f"the page failed: {result['error']}; {context}"
    result["elapsed_s"] = elapsed_s
    return result


def assert_played(result: dict, stream: Stream, size: tuple[int, int]) -> None:
    """Every chunk decoded, in order, at the picture size: what a viewer needs to play it."""
    name = stream.name
    assert result["supported"], f"{name}: chromium cannot decode {stream.codec}"
    assert not result["errors"], f"{name}: {result['errors']}"
    assert result["decoded"] == len(stream.chunks), (
        f"{name}: {result['decoded']} frames decoded from {len(stream.chunks)} messages"
    )
    assert result["timestamps"] == [chunk.timestamp_us for chunk in stream.chunks], (
        f"{name}: frames came out of the decoder out of message order"
    )
    assert result["sizes"] == [f"{size[0]}x{size[1]}"], f"{name}: decoded sizes {result['sizes']}"


def synthetic_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """A moving scene (gradient background, a sliding block, noise) so P frames code motion."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(count):
        frame = np.empty((height, width, 3), np.uint8)
        frame[..., 0] = (x * 255 // width + 4 * index) % 256
        frame[..., 1] = y * 255 // height
        frame[..., 2] = 128
        left = (index * 7) % (width - 60)
        frame[60:120, left : left + 60] = (230, 40, 40)
        frame = np.clip(frame + rng.integers(-8, 9, frame.shape), 0, 255).astype(np.uint8)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def encoder_bag(tmp_path_factory) -> Path:
    """ENCODER_FRAMES frames from QPMapEncoder (QP map on, a keyframe forced halfway), written
    through stac_eval.foxglove_video into an mcap bag with rosbags."""
    width, height = ENCODER_SIZE
    rows, cols = macroblock_grid(width, height)
    qp_map = np.zeros((rows, cols), np.int8)
    qp_map[:, : cols // 2] = -6  # finer on the left, coarser on the right
    qp_map[:, cols // 2 :] = 6
    typestore = get_typestore(Stores.ROS2_JAZZY)
    register_compressed_video(typestore)
    path = tmp_path_factory.mktemp("encoder_bag") / "bag"
    config = EncoderConfig(crf=28.0, fps=10.0, gop_frames=250)
    with (
        QPMapEncoder(config, width, height) as encoder,
        Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer,
    ):
        connection = writer.add_connection(VIDEO_TOPIC, COMPRESSED_VIDEO_TYPE, typestore=typestore)
        for index, frame in enumerate(synthetic_frames(ENCODER_FRAMES, width, height)):
            packet = encoder.encode(frame, qp_map=qp_map, force_keyframe=index == 15)
            stamp_ns = 1_700_000_000_000_000_000 + index * 100_000_000
            cdr = compressed_video_cdr(
                typestore,
                sec=stamp_ns // 1_000_000_000,
                nanosec=stamp_ns % 1_000_000_000,
                frame_id="camera",
                data=packet.data,
                keyframe=packet.keyframe,
            )
            writer.write(connection, stamp_ns, cdr)
    return path


def read_video(bag: Path) -> list:
    """The CompressedVideo messages of a bag's VIDEO_TOPIC, in log-time order."""
    return read_topic(bag, VIDEO_TOPIC, COMPRESSED_VIDEO_TYPE)


def read_topic(bag: Path, topic: str, message_type: str) -> list:
    """The messages of one topic of a bag, in log-time order (our types and CompressedVideo
    registered, as a viewer would read them)."""
    with AnyReader([bag], default_typestore=stac_typestore()) as reader:
        connections = [c for c in reader.connections if c.topic == topic]
        assert connections, f"{bag} has no {topic}"
        assert {c.msgtype for c in connections} == {message_type}
        return [
            reader.deserialize(raw, connection.msgtype)
            for connection, _, raw in reader.messages(connections=connections)
        ]


def without_parameter_sets(chunk: Chunk) -> Chunk:
    """The chunk with its SPS and PPS removed (an encoder that does not repeat headers)."""
    parameter_sets = (NAL_TYPE_SPS, NAL_TYPE_PPS)
    units = split_nal_units(chunk.data)
    data = b"".join(unit.data for unit in units if unit.nal_type not in parameter_sets)
    return Chunk(data, chunk.key, chunk.timestamp_us)


@pytest.mark.browser
def test_encoder_stream_plays_in_chromium(encoder_bag, chromium, tmp_path):
    messages = read_video(encoder_bag)
    assert len(messages) == ENCODER_FRAMES
    stream = stream_from_messages("encoder", messages)
    keyframes = [index for index, chunk in enumerate(stream.chunks) if chunk.key]
    assert keyframes == [0, 15], f"keyframes at {keyframes}, expected the first and the forced one"
    # A viewer that seeks starts decoding at the nearest keyframe: the forced one must carry
    # its own SPS/PPS.
    seek = Stream("seek to the forced keyframe", stream.codec, stream.chunks[15:])
    # Negative controls, each breaking one rule of stac_eval.foxglove_video, so a check that
    # cannot fail would show here: the seek without the repeated headers, two frames a message.
    no_headers = Stream(
        "seek, keyframe without SPS/PPS",
        stream.codec,
        [without_parameter_sets(stream.chunks[15]), *stream.chunks[16:]],
    )
    pairs = [
        Chunk(first.data + second.data, first.key, first.timestamp_us)
        for first, second in zip(stream.chunks[0::2], stream.chunks[1::2], strict=True)
    ]
    two_frames = Stream("two frames per message", stream.codec, pairs)
    result = decode_in_chromium(chromium, [stream, seek, no_headers, two_frames], tmp_path)
    by_name = {played["name"]: played for played in result["streams"]}
    print(f"chromium ({result['elapsed_s']:.1f} s, codec {stream.codec}):")
    for played in result["streams"]:
        print(
            f"  {played['name']}: {played['decoded']}/{played['chunks']} decoded, "
            f"errors {played['errors'][:1]}"
        )
    assert_played(by_name[stream.name], stream, ENCODER_SIZE)
    assert_played(by_name[seek.name], seek, ENCODER_SIZE)
    for control in (no_headers, two_frames):
        played = by_name[control.name]
        assert played["decoded"] < len(control.chunks) and played["errors"], (
            f"negative control '{control.name}' played: {played}"
        )


@pytest.mark.dds
@pytest.mark.slow
@pytest.mark.browser
def test_the_edges_live_video_plays_in_chromium(graph_run, chromium, tmp_path):
    """The edge's live `video` topic (recorded as it came) holds every access unit the robot
    sent, unchanged, and plays in the browser as Foxglove would play it."""
    result, out_dir = graph_run
    assert result.video_live, (
        "the recorder found no foxglove_msgs, so the bag's video is not the edge's live topic "
        "(scripts/setup.sh builds a test-only foxglove_msgs where no real one is installed)"
    )
    assert not result.video_errors, f"frames left out of {VIDEO_TOPIC}: {result.video_errors}"
    messages = read_video(out_dir / "bag")
    encoded = {
        stamp_ns(frame.header.stamp): frame
        for frame in read_topic(out_dir / "bag", "/stac/encoded", "stac_msgs/msg/EncodedFrame")
    }
    assert len(messages) == len(encoded) == GRAPH_FRAMES
    stream = stream_from_messages("graph bag", messages)
    for message, chunk in zip(messages, stream.chunks, strict=True):
        frame = encoded.get(stamp_ns(message.timestamp))
        assert frame is not None, f"video timestamp {message.timestamp} is no capture stamp"
        assert bytes(message.data) == bytes(frame.data), f"frame {frame.frame_seq}: other bytes"
        assert message.frame_id == frame.header.frame_id == "camera"
        assert chunk.key == frame.keyframe, f"frame {frame.frame_seq}: keyframe flag differs"
    browser = decode_in_chromium(chromium, [stream], tmp_path)
    (played,) = browser["streams"]
    print(
        f"chromium decoded {played['decoded']}/{played['chunks']} frames of the graph bag's "
        f"{VIDEO_TOPIC} ({stream.codec}) in {browser['elapsed_s']:.1f} s"
    )
    assert_played(played, stream, GRAPH_FRAME_SIZE)
