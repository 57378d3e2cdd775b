"""How the edge heals a broken stream: it counts what went missing, asks the robot for a
keyframe (rate-limited), and measures how long the outage lasted.

After a lost or damaged access unit, or when the edge joins a stream already running, the
decoder can only wait for the next IDR picture, which the robot sends on its own only every
GOP (2 s by default). One request over the robot's ~/request_keyframe service brings it within
a round trip. Plain Python: the node turns `should_request` into a service call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stac_codec.h264_decoder import DecodeResult

# A jump of more frame numbers than this is not a loss but a new numbering (a restarted robot,
# or a message from someone else): counting it would turn one bogus frame_seq into millions
# of "lost" frames.
MAX_PLAUSIBLE_GAP = 1000
# Frame numbers of refused units remembered (they arrived: not lost, but failed).
REFUSED_MEMORY = 64


@dataclass
class ResyncTracker:
    """min_request_interval_s: at most one keyframe request per this interval (the robot's
    answer takes a round trip; asking again before it can arrive only costs bits)."""

    min_request_interval_s: float = 0.5
    frames_lost: int = 0
    recoveries_s: list[float] = field(default_factory=list)
    _last_frame_seq: int | None = None
    _last_request_s: float | None = None
    _outage_since_s: float | None = None
    _outage_after_seq: int = 0
    _refused_seqs: set[int] = field(default_factory=set)

    def on_frame(self, result: DecodeResult) -> int:
        """Count the frames missing before this decoded (or waiting, or corrupt) unit; returns
        that count. Units refused before use are not part of the sequence: their numbers are
        only remembered, so that a refused unit of the stream (it arrived; it failed) is not
        also counted as lost. A number that goes backwards, or jumps implausibly far ahead, is
        a new numbering (a robot that restarted): nothing counted as lost."""
        frame_seq = result.frame_seq
        if frame_seq is None:
            return 0
        if result.refused:
            if len(self._refused_seqs) >= REFUSED_MEMORY:
                self._refused_seqs.clear()
            self._refused_seqs.add(frame_seq)
            return 0
        previous, self._last_frame_seq = self._last_frame_seq, frame_seq
        arrived, self._refused_seqs = self._refused_seqs, set()
        if previous is None or frame_seq <= previous or frame_seq - previous > MAX_PLAUSIBLE_GAP:
            return 0
        missing = frame_seq - previous - 1 - sum(previous < seq < frame_seq for seq in arrived)
        self.frames_lost += missing
        return missing

    def should_request(self, result: DecodeResult, now_s: float) -> bool:
        """After each decode: True when a keyframe request should go out now. A unit refused
        before use (garbage, someone else's message) changed nothing: no request for it; if it
        was part of the stream, the next unit shows the gap and asks then."""
        if result.ok or result.refused:
            return False
        if self._outage_since_s is None:  # a loss, damage, or joining mid-stream
            self._outage_since_s = now_s
            self._outage_after_seq = result.frame_seq or 0
        last = self._last_request_s
        if last is not None and now_s - last < self.min_request_interval_s:
            return False
        self._last_request_s = now_s
        return True

    def request_not_sent(self) -> None:
        """The request should_request asked for could not go out (the robot's service not
        matched yet, as on an edge that just took a robot over): it does not count against the
        interval, so the next unit that fails asks again."""
        self._last_request_s = None

    def on_mask(self, frame_seq: int, now_s: float) -> float | None:
        """A mask of frame `frame_seq` was published: the outage it ends, in seconds, or None
        (no outage, or the mask is of a frame from before the outage began)."""
        since = self._outage_since_s
        if since is None or frame_seq <= self._outage_after_seq:
            return None
        self._outage_since_s = None
        self.recoveries_s.append(now_s - since)
        return now_s - since

    @property
    def in_outage(self) -> bool:
        return self._outage_since_s is not None
