"""Wire forms of a class-id mask, for the masks the edge sends back to the robot.

Version 2 (the default, `encoding` "stac_mask_v2"): the class ids arithmetic-coded in raster
order with adaptive context models (`_mask_coder`, C++: each pixel in the context of its
already-coded neighbours; one decision per stretch where the row above is flat; boundary
positions guessed from how they moved in the rows above). Its codings (`MASK_CODINGS`, the
edge's `mask_coding` parameter) differ only in what the edge puts in:

- lossless: the mask as it is;
- near_lossless: boundaries between large classes (each at least `protected_share`, 2 %, of the
  mask) may move by up to `tolerance_px` where the coder expects them to; smaller classes
  (poles, signs, people) stay exact. The decoder is the same;
- reduced: the mask at 1/`reduction` of each side (each cell its majority class); the robot
  upsamples it (each pixel the class with the most bilinear weight among its four nearest
  cells);
- near_lossless_gated: near_lossless masks, but where the new mask differs little from the
  last one sent (`MaskSender.change` below `keep_below_change`) the edge sends a "keep"
  message instead (mode 3: the header alone, no mask): the robot goes on carrying the mask it
  holds by its own flow. At most `max_kept` keeps in a row. Stateful on the edge
  (`MaskSender`, one per robot); a robot needs nothing but the mask it holds.
- near_lossless_ref: near_lossless masks, numbered, each coded either alone or with the last
  mask sent (as the robot decoded it: both ends hold it exactly) as extra context of the
  arithmetic coder (JBIG2-refinement style: where the scene stands still, "as before" costs
  next to nothing), whichever is smaller; a referenced mask names its reference (sequence
  number and the CRC32 of its class ids) and the robot decodes it only when it holds exactly
  that mask (`MaskReceiver`), else refuses it (`MaskReferenceError`). Every `key_interval`-th
  mask, and the first after a `MaskSender.reset` (a keyframe request), is coded alone (a key
  mask), so a robot that missed a mask recovers;
- near_lossless_keyref: the same, each mask coded against the last key mask instead: a bit
  larger, but a robot that missed a mask (not a key) refuses no other.

Version 1 (`encoding` "stac_rle_deflate_v1", coding rle_deflate): the runs of the raster
scan, class id and LEB128 varint length each, deflated. Robots still read it, so an edge of
an earlier release keeps working with this one.

What each costs and how close it stays: docs/masks.md (`stac-bench masks`).

Layouts (big-endian), each followed by the CRC32 of everything before it (a damaged mask is
refused, not shown):

    v1: version=1 u8 | width u16 | height u16 | runs u32 | deflated (ids, varint lengths)
    v2: version=2 u8 | mode u8 | width u16 | height u16 | coded width u16 | coded height u16
        | flags u8 | range-coded stream (mode 3, keep: coded size 0x0, no stream; mode 4,
        numbered: sequence u32 | reference sequence u32 | reference CRC32 u32 before the
        stream, the reference fields 0 unless flags has FLAG_REFERENCED)

Decoding never allocates or works beyond the receiver's pixel budget (`max_pixels`, the frame
it holds): sizes are checked before anything is allocated, and the range decoder writes
exactly the declared pixels and stops a few bytes past the end of the data.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import zlib
from dataclasses import dataclass

import numpy as np

from stac_codec.extensions import load_extension

_mask_coder = load_extension("_mask_coder")

# whether the extension was built with references (mode 4); one built before still codes the
# other codings, so a stale build fails only where a referenced coding is chosen
REFERENCES_BUILT = "reference" in (_mask_coder.encode.__doc__ or "")

RLE_DEFLATE_VERSION = 1
MASK_WIRE_VERSION = 2  # what every coding but rle_deflate writes
ENCODING_NAME = "stac_mask_v2"  # what the SegmentationMask message's `encoding` says for v2
RLE_DEFLATE_ENCODING = "stac_rle_deflate_v1"  # and for v1
ENCODING_BY_VERSION = {RLE_DEFLATE_VERSION: RLE_DEFLATE_ENCODING, MASK_WIRE_VERSION: ENCODING_NAME}
MAX_SIDE_PIXELS = 16384

MODE_CONTEXT = 1  # full resolution
MODE_REDUCED = 2  # coded smaller, upsampled by the receiver
MODE_KEEP = 3  # no mask: the edge's mask agrees with the last one sent; keep carrying it
MODE_NUMBERED = 4  # full resolution, numbered; may be coded against a reference
FLAG_LOSSY = 0x01  # the edge moved boundaries (near_lossless) or reduced the mask
FLAG_REFERENCED = 0x02  # mode 4: coded with the reference it names as context
KEY_INTERVAL = 8  # near_lossless_ref: every this many masks one is coded alone
REFERENCES = ("previous", "key")  # what a referenced coding codes against: the last mask sent
# or the last one coded alone (then a missed mask costs the robot no other one, unless a key)

_CONFIDENT = 0.8  # near_lossless: a pixel may take a class the model gives at least this
GUIDE_SIGMA = 12.0  # guided upsampling: the colour distance (0..255 a channel) that halves ~0.6
_MAX_MOVABLE_CLASS = 63  # class ids a near_lossless boundary may move between (a 64-bit set)
KEEP_BELOW_CHANGE = 0.35  # near_lossless_gated: a mask this close to the last one sent stays
MAX_KEPT = 1  # ... but at most this many keeps in a row


@dataclass(frozen=True)
class MaskCoding:
    """How the edge puts a mask on the wire.

    version: 1 (run-length + deflate) or 2 (context-coded); reduction: the mask travels at
    1/reduction of each side; tolerance_px: how far a boundary between two large classes may
    move (0: exact); protected_share: classes below this share of the mask's pixels never
    move; keep_below_change: a `MaskSender` sends a keep instead of a mask whose change from
    the last one sent is below this (`MaskSender.change`; 0: never); max_kept: at most this
    many keeps in a row; key_interval > 0: a `MaskSender` numbers the masks and may code each
    against the last one sent (mode 4), every key_interval-th alone; reference: what such a
    mask is coded against, "previous" (the last mask sent: smaller, but a robot that missed a
    mask refuses the next ones until a key mask) or "key" (the last mask coded alone). A
    single `encode_mask` always sends the mask (alone, unnumbered)."""

    name: str
    version: int = MASK_WIRE_VERSION
    reduction: int = 1
    tolerance_px: int = 0
    protected_share: float = 0.02
    keep_below_change: float = 0.0
    max_kept: int = 0
    key_interval: int = 0
    reference: str = "previous"

    def __post_init__(self) -> None:
        if self.key_interval < 0:
            raise ValueError(f"key_interval must be >= 0, got {self.key_interval}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference {self.reference!r}: one of {REFERENCES}")
        if self.key_interval and (self.reduction != 1 or self.gated or self.version != 2):
            raise ValueError("a referenced coding is full-resolution v2 without keeps")

    @property
    def lossless(self) -> bool:
        return self.reduction == 1 and self.tolerance_px == 0 and not self.gated

    @property
    def referenced(self) -> bool:
        """Masks are numbered and may be coded against the last one sent."""
        return self.key_interval > 0

    @property
    def gated(self) -> bool:
        """A MaskSender may send keeps instead of masks."""
        return self.keep_below_change > 0.0 and self.max_kept > 0

    @property
    def encoding(self) -> str:
        """The SegmentationMask `encoding` of masks in this coding."""
        return ENCODING_BY_VERSION[self.version]


MASK_CODINGS = {
    coding.name: coding
    for coding in (
        MaskCoding("rle_deflate", version=RLE_DEFLATE_VERSION),
        MaskCoding("lossless"),
        MaskCoding("near_lossless", tolerance_px=1),
        MaskCoding("reduced", reduction=2),
        MaskCoding(
            "near_lossless_gated",
            tolerance_px=1,
            keep_below_change=KEEP_BELOW_CHANGE,
            max_kept=MAX_KEPT,
        ),
        MaskCoding("near_lossless_ref", tolerance_px=1, key_interval=KEY_INTERVAL),
        MaskCoding(
            "near_lossless_keyref", tolerance_px=1, key_interval=KEY_INTERVAL, reference="key"
        ),
    )
}
DEFAULT_MASK_CODING = "near_lossless_ref"  # docs/masks.md: the demo's trade-off

_HEADER_V1 = struct.Struct(">BHHI")
_HEADER_V2 = struct.Struct(">BBHHHHB")
_NUMBERS = struct.Struct(">III")  # mode 4: sequence, reference sequence, reference CRC32
FLAGS_OFFSET = _HEADER_V2.size - 1  # where a v2 header's flags byte is
_CRC = struct.Struct(">I")
_MAX_VARINT_BYTES = 3  # runs of up to 2^21 - 1 pixels; longer runs are split
_MAX_RUN = (1 << (7 * _MAX_VARINT_BYTES)) - 1


class MaskWireError(ValueError):
    """Bytes that are not a mask in this wire form."""


class MaskReferenceError(MaskWireError):
    """A well-formed mask coded against a reference the receiver does not hold (it missed a
    mask: the edge's next key mask recovers). reason: "no_reference" (none held) or
    "reference_mismatch" (another mask held)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def mask_coding(name: str, key_interval: int | None = None) -> MaskCoding:
    """The coding of that name (ValueError naming the choices otherwise); key_interval: a
    referenced coding's key mask interval instead of its default (ignored by the others)."""
    try:
        coding = MASK_CODINGS[name]
    except KeyError:
        raise ValueError(f"mask coding {name!r}: choose one of {sorted(MASK_CODINGS)}") from None
    if key_interval is not None and coding.referenced:
        if key_interval < 1:
            raise ValueError(f"key_interval must be >= 1, got {key_interval}")
        coding = dataclasses.replace(coding, key_interval=key_interval)
    return coding


def encode_mask(class_ids: np.ndarray, coding: str | MaskCoding = DEFAULT_MASK_CODING) -> bytes:
    """The wire bytes of an HxW uint8 class-id mask, as the edge sends it."""
    return _encode(class_ids, coding, with_decoded=False)[0]


def encode_mask_and_decoded(
    class_ids: np.ndarray, coding: str | MaskCoding = DEFAULT_MASK_CODING
) -> tuple[bytes, np.ndarray]:
    """The wire bytes and the mask the robot will decode from them (the same mask unless
    the coding is lossy)."""
    return _encode(class_ids, coding, with_decoded=True)


def _encode(class_ids, coding: str | MaskCoding, with_decoded: bool):
    if not isinstance(class_ids, np.ndarray) or class_ids.ndim != 2 or class_ids.dtype != np.uint8:
        raise ValueError("a mask must be a 2-D uint8 array of class ids")
    height, width = class_ids.shape
    if not (1 <= width <= MAX_SIDE_PIXELS and 1 <= height <= MAX_SIDE_PIXELS):
        raise ValueError(f"a {width}x{height} mask is outside the wire form's bounds")
    coding = mask_coding(coding) if isinstance(coding, str) else coding
    mask = np.ascontiguousarray(class_ids)
    if coding.version == RLE_DEFLATE_VERSION:
        return _encode_rle(mask), mask
    coded_width, coded_height = reduced_size(width, height, coding.reduction)
    if coding.reduction > 1:
        coded = _mask_coder.downsample(mask, width, height, coded_width, coded_height)
        stream, sent = _mask_coder.encode(coded, coded_width, coded_height, None, 0, 0, 0.0)
        lossy = True
    else:
        stream, sent, lossy = _code_full(mask, coding, None, _movable(mask, coding))
    mode = MODE_REDUCED if coding.reduction > 1 else MODE_CONTEXT
    flags = FLAG_LOSSY if lossy else 0
    body = _HEADER_V2.pack(MASK_WIRE_VERSION, mode, width, height, coded_width, coded_height, flags)
    body += stream
    data = body + _CRC.pack(zlib.crc32(body))
    if not with_decoded:
        return data, None
    if coding.reduction > 1:
        return data, _upsample(sent, coded_width, coded_height, width, height)
    return data, np.frombuffer(sent, np.uint8).reshape(height, width)


def _movable(mask: np.ndarray, coding: MaskCoding) -> int:
    """The classes whose boundaries `coding` may move in this mask (0: none)."""
    return movable_classes(mask, coding.protected_share) if coding.tolerance_px > 0 else 0


def _code_full(mask: np.ndarray, coding: MaskCoding, reference: np.ndarray | None, movable: int):
    """(stream, the mask the decoder makes of it as bytes, whether boundaries moved) of a
    full-resolution mask, with `reference` (a mask of its size both ends hold) as context or
    alone; movable: `_movable(mask, coding)` (once per mask, however many codings are tried)."""
    height, width = mask.shape
    context = () if reference is None else (reference,)  # (an extension built before mode 4)
    stream, sent = _mask_coder.encode(mask, width, height, None, 0, 0, 0.0, *context)
    lossy = False
    if movable:  # the moved boundaries usually cost less, not always: the smaller one goes
        moved_stream, moved = _mask_coder.encode(
            mask, width, height, None, coding.tolerance_px, movable, _CONFIDENT, *context
        )
        if len(moved_stream) < len(stream):
            stream, sent, lossy = moved_stream, moved, True
    return stream, sent, lossy


def _encode_numbered(
    width: int,
    height: int,
    stream: bytes,
    lossy: bool,
    sequence: int,
    reference: tuple[int, int] | None,
) -> bytes:
    """Mode 4 wire bytes: numbered `sequence`, coded against the mask numbered
    reference[0] whose class ids have CRC32 reference[1] (None: coded alone)."""
    flags = (FLAG_LOSSY if lossy else 0) | (FLAG_REFERENCED if reference else 0)
    body = _HEADER_V2.pack(MASK_WIRE_VERSION, MODE_NUMBERED, width, height, width, height, flags)
    body += _NUMBERS.pack(sequence, *(reference or (0, 0))) + stream
    return body + _CRC.pack(zlib.crc32(body))


def encode_keep(width: int, height: int) -> bytes:
    """A keep message for a width x height mask: "my mask of this frame agrees with the last
    one I sent; keep carrying the one you hold" (v2, mode 3: the header alone)."""
    if not (1 <= width <= MAX_SIDE_PIXELS and 1 <= height <= MAX_SIDE_PIXELS):
        raise ValueError(f"a {width}x{height} mask is outside the wire form's bounds")
    body = _HEADER_V2.pack(MASK_WIRE_VERSION, MODE_KEEP, width, height, 0, 0, 0)
    return body + _CRC.pack(zlib.crc32(body))


class MaskSender:
    """The edge's side of a robot's masks in one coding: `encode` gives the wire bytes of each
    new mask. With a gated coding it remembers the last mask sent (as the robot decoded it) and
    sends a keep instead of a new mask whose `change` from it is below `keep_below_change`, at
    most `max_kept` times in a row; with a referenced coding it numbers the masks and codes
    each against the last one sent where that is smaller, every `key_interval`-th alone;
    otherwise every mask goes, as `encode_mask` codes it. `reset` (after a loss, a keyframe
    request; from any thread) makes the next mask go in full (and alone).

    change: for each class seen so far, the pixels where the two masks disagree about it,
    divided by its mean area per mask (over the masks this sender saw), averaged over the
    classes: the share of each class's usual area that keeping the held mask gets wrong,
    weighted as a mean IoU over the whole stream weighs them (a 50-pixel class that moved
    counts as much as a road that did)."""

    def __init__(self, coding: str | MaskCoding = DEFAULT_MASK_CODING) -> None:
        self.coding = mask_coding(coding) if isinstance(coding, str) else coding
        if self.coding.referenced and not REFERENCES_BUILT:
            raise RuntimeError(
                f"mask coding {self.coding.name} needs stac_codec._mask_coder built with "
                "references: rebuild it (scripts/setup.sh, or colcon build in the workspace)"
            )
        self._held: np.ndarray | None = None
        self._kept = 0
        self._areas = np.zeros(256, np.int64)  # each class's pixels over the masks seen
        self._masks = 0
        self._sequence = 0  # the next mask's number (referenced codings)
        # referenced codings: "previous" (the last mask sent) and "key" (the last coded
        # alone), each as the robot decodes it, with its number and CRC32
        self._references: dict[str, tuple[np.ndarray, tuple[int, int]]] = {}
        self._since_key = 0  # referenced masks sent since the last mask coded alone
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self._held = None
            self._references = {}

    def encode(self, class_ids: np.ndarray) -> bytes:
        return self.encode_and_decoded(class_ids)[0]

    def encode_and_decoded(self, class_ids: np.ndarray) -> tuple[bytes, np.ndarray | None]:
        """The wire bytes and the mask the robot decodes from them (None for a keep: the
        robot goes on with the mask it holds)."""
        coding = self.coding
        if not coding.gated and not coding.referenced:
            return encode_mask_and_decoded(class_ids, coding)
        if (
            not isinstance(class_ids, np.ndarray)
            or class_ids.ndim != 2
            or class_ids.dtype != np.uint8
        ):
            raise ValueError("a mask must be a 2-D uint8 array of class ids")
        with self._lock:
            if coding.referenced:
                return self._referenced(class_ids, coding)
            return self._gated(class_ids, coding)

    def _referenced(self, class_ids: np.ndarray, coding: MaskCoding) -> tuple[bytes, np.ndarray]:
        height, width = class_ids.shape
        if not (1 <= width <= MAX_SIDE_PIXELS and 1 <= height <= MAX_SIDE_PIXELS):
            raise ValueError(f"a {width}x{height} mask is outside the wire form's bounds")
        mask = np.ascontiguousarray(class_ids)
        movable = _movable(mask, coding)
        stream, sent, lossy = _code_full(mask, coding, None, movable)
        reference = None
        held = self._references.get(coding.reference)
        if (
            held is not None
            and held[0].shape == mask.shape
            and self._since_key + 1 < coding.key_interval
        ):
            against = _code_full(mask, coding, held[0], movable)
            if len(against[0]) < len(stream):
                (stream, sent, lossy), reference = against, held[1]
        sequence = self._sequence
        data = _encode_numbered(width, height, stream, lossy, sequence, reference)
        decoded = np.frombuffer(sent, np.uint8).reshape(height, width)
        self._references["previous"] = (decoded, (sequence, zlib.crc32(sent)))
        if reference is None:
            self._references["key"] = self._references["previous"]
        self._sequence = (sequence + 1) & 0xFFFFFFFF
        self._since_key = self._since_key + 1 if reference else 0
        return data, decoded

    def _gated(self, class_ids: np.ndarray, coding: MaskCoding) -> tuple[bytes, np.ndarray | None]:
        self._areas += np.bincount(class_ids.reshape(-1), minlength=256)
        self._masks += 1
        held = self._held
        if (
            held is not None
            and self._kept < coding.max_kept
            and class_ids.shape == held.shape
            and self.change(class_ids, held) < coding.keep_below_change
        ):
            self._kept += 1
            return encode_keep(held.shape[1], held.shape[0]), None
        data, decoded = encode_mask_and_decoded(class_ids, coding)
        self._held, self._kept = decoded, 0
        return data, decoded

    def change(self, new: np.ndarray, held: np.ndarray) -> float:
        """How far `held` is from `new` (see the class docstring; 0: equal)."""
        pairs = new.reshape(-1).astype(np.int32) * 256 + held.reshape(-1)
        confusion = np.bincount(pairs, minlength=65536).reshape(256, 256)
        wrong = confusion.sum(0) + confusion.sum(1) - 2 * np.diag(confusion)
        mean_area = self._areas / max(self._masks, 1)
        seen = mean_area > 0
        return float((wrong[seen] / mean_area[seen]).mean())


def reduced_size(width: int, height: int, reduction: int) -> tuple[int, int]:
    """(width, height) of a mask sent at 1/reduction of each side (rounded up)."""
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    return -(-width // reduction), -(-height // reduction)


def encoding_of(data: bytes) -> str:
    """The SegmentationMask `encoding` that goes with these wire bytes (by their version)."""
    version = data[0] if data else None
    if version not in ENCODING_BY_VERSION:
        raise MaskWireError(f"mask wire version {version}, this decoder reads 1 and 2")
    return ENCODING_BY_VERSION[version]


def mask_size(data: bytes) -> tuple[int, int]:
    """(width, height) the header declares, read without decoding anything: what a receiver
    checks against the picture it holds before it lets the decoder allocate."""
    encoding_of(data)
    header = _HEADER_V1 if data[0] == RLE_DEFLATE_VERSION else _HEADER_V2
    if len(data) < header.size + _CRC.size:
        raise MaskWireError(f"{len(data)} bytes is shorter than header and checksum")
    if data[0] == RLE_DEFLATE_VERSION:
        _, width, height, _ = header.unpack_from(data)
    else:
        _, _, width, height, *_ = header.unpack_from(data)
    if not (1 <= width <= MAX_SIDE_PIXELS and 1 <= height <= MAX_SIDE_PIXELS):
        raise MaskWireError(f"a {width}x{height} mask is outside the wire form's bounds")
    return width, height


def is_keep(data: bytes) -> bool:
    """Whether these bytes are a keep message (version 2, mode 3): no mask, "keep carrying
    the one you hold". Only the header is looked at: decode_mask_or_keep checks the rest."""
    return len(data) >= 2 and data[0] == MASK_WIRE_VERSION and data[1] == MODE_KEEP


def is_numbered(data: bytes) -> bool:
    """Whether these bytes are a numbered mask (version 2, mode 4), which may need the
    reference it names (MaskReceiver decodes it)."""
    return len(data) >= 2 and data[0] == MASK_WIRE_VERSION and data[1] == MODE_NUMBERED


class MaskReceiver:
    """The robot's side of the masks from one edge: `decode` reads every coding (keeps give
    None) and holds the references the edge may code the next numbered mask against: the last
    numbered mask it decoded and the last one coded alone (a key mask). A mask coded against
    any other reference is refused (MaskReferenceError: the robot missed a mask; the edge's
    next key mask recovers); an unnumbered mask clears the references."""

    def __init__(self) -> None:
        self._references: dict[tuple[int, int], np.ndarray] = {}  # (sequence, CRC32): mask
        self._key: tuple[int, int] | None = None  # the last key mask's number
        self._lock = threading.Lock()

    def decode(
        self, data: bytes, *, max_pixels: int, guide: np.ndarray | None = None
    ) -> np.ndarray | None:
        data = bytes(data)
        with self._lock:
            if not is_numbered(data):
                mask = decode_mask_or_keep(data, max_pixels=max_pixels, guide=guide)
                if mask is not None:
                    self._references, self._key = {}, None
                return mask
            mask, number, referenced = _decode_checked(data, max_pixels, None, self._references)
            if not referenced:
                self._key = number
            kept = {self._key: self._references[self._key]} if referenced and self._key else {}
            self._references = {**kept, number: mask}
            return mask


def decode_mask_or_keep(
    data: bytes, *, max_pixels: int, guide: np.ndarray | None = None
) -> np.ndarray | None:
    """decode_mask, except that a well-formed keep message gives None (every coding, keeps
    included; a numbered mask coded against a reference needs MaskReceiver)."""
    data = bytes(data)
    if is_keep(data):
        width, height = mask_size(data)
        if width * height > max_pixels:
            raise MaskWireError(f"a {width}x{height} mask is larger than {max_pixels} pixels")
        body, (checksum,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
        if zlib.crc32(body) != checksum:
            raise MaskWireError("checksum mismatch: the mask was damaged or truncated")
        _, _, _, _, coded_width, coded_height, flags = _HEADER_V2.unpack_from(body)
        if len(body) != _HEADER_V2.size or (coded_width, coded_height, flags) != (0, 0, 0):
            raise MaskWireError("a keep message carries nothing but its header")
        return None
    return decode_mask(data, max_pixels=max_pixels, guide=guide)


def decode_mask(data: bytes, *, max_pixels: int, guide: np.ndarray | None = None) -> np.ndarray:
    """Inverse of encode_mask (any coding; reduced masks come back upsampled to their full
    size); MaskWireError on anything malformed or larger than max_pixels (the receiver's
    budget, e.g. the pixels of the frame it holds: a forged header must not make it allocate
    more; the work and memory are bounded by max_pixels).

    guide: the receiver's HxWx3 uint8 RGB frame of the mask, to weight the upsampling of a
    reduced mask by colour (joint bilateral); measured to agree less with the edge's mask than
    plain upsampling (docs/masks.md: the model's boundaries do not follow the image's edges
    at this scale), so the robot does not pass it.

    A numbered mask coded against a reference raises MaskReferenceError (MaskReceiver, which
    holds references, decodes it); one coded alone decodes here."""
    return _decode_checked(bytes(data), max_pixels, guide, {})[0]


def _decode_checked(
    data: bytes,
    max_pixels: int,
    guide: np.ndarray | None,
    references: dict[tuple[int, int], np.ndarray],
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """The mask, (for a numbered one) its sequence and CRC32, and whether it was coded
    against a reference; `references`: the receiver's, by (sequence, CRC32)."""
    width, height = mask_size(data)
    pixels = width * height
    if pixels > max_pixels:
        raise MaskWireError(f"a {width}x{height} mask is larger than {max_pixels} pixels")
    body, (checksum,) = data[: -_CRC.size], _CRC.unpack(data[-_CRC.size :])
    if zlib.crc32(body) != checksum:
        raise MaskWireError("checksum mismatch: the mask was damaged or truncated")
    if data[0] == RLE_DEFLATE_VERSION:
        return _decode_rle(body, width, height), (0, 0), False
    if guide is not None and (guide.shape != (height, width, 3) or guide.dtype != np.uint8):
        raise ValueError(f"a guide for a {width}x{height} mask must be {height}x{width}x3 uint8")
    if body[1] == MODE_NUMBERED:
        return _decode_numbered(body, width, height, references)
    return _decode_context(body, width, height, guide), (0, 0), False


def _decode_numbered(
    body: bytes, width: int, height: int, references: dict[tuple[int, int], np.ndarray]
) -> tuple[np.ndarray, tuple[int, int], bool]:
    _, _, _, _, coded_width, coded_height, flags = _HEADER_V2.unpack_from(body)
    if (coded_width, coded_height) != (width, height):
        raise MaskWireError("a numbered mask whose coded size is not its size")
    if flags & ~(FLAG_LOSSY | FLAG_REFERENCED):
        raise MaskWireError(f"flags {flags:#04x} unknown to this decoder")
    if len(body) < _HEADER_V2.size + _NUMBERS.size:
        raise MaskWireError("a numbered mask shorter than its numbers")
    sequence, reference_sequence, reference_crc = _NUMBERS.unpack_from(body, _HEADER_V2.size)
    reference = None
    if flags & FLAG_REFERENCED:
        if not references:
            raise MaskReferenceError(
                "no_reference",
                f"mask {sequence} is coded against mask {reference_sequence}, and no mask is held",
            )
        reference = references.get((reference_sequence, reference_crc))
        if reference is None or reference.shape != (height, width):
            held = ", ".join(f"{number} (CRC32 {crc:08x})" for number, crc in sorted(references))
            raise MaskReferenceError(
                "reference_mismatch",
                f"mask {sequence} is coded against mask {reference_sequence} "
                f"(CRC32 {reference_crc:08x}); the masks held: {held}",
            )
    elif (reference_sequence, reference_crc) != (0, 0):
        raise MaskWireError("a mask coded alone that names a reference")
    try:
        context = () if reference is None else (reference,)
        coded = _mask_coder.decode(
            body[_HEADER_V2.size + _NUMBERS.size :], width, height, None, *context
        )
    except ValueError as error:
        raise MaskWireError(str(error)) from error
    mask = np.frombuffer(coded, np.uint8).reshape(height, width)
    return mask, (sequence, zlib.crc32(coded)), reference is not None


def _decode_context(body: bytes, width: int, height: int, guide: np.ndarray | None):
    _, mode, _, _, coded_width, coded_height, _ = _HEADER_V2.unpack_from(body)
    if mode == MODE_KEEP:
        raise MaskWireError("a keep message carries no mask (decode_mask_or_keep reads it)")
    if mode not in (MODE_CONTEXT, MODE_REDUCED):
        raise MaskWireError(f"mask coding mode {mode} is unknown to this decoder")
    if mode == MODE_CONTEXT and (coded_width, coded_height) != (width, height):
        raise MaskWireError("a full-resolution mask whose coded size is not its size")
    if not (1 <= coded_width <= width and 1 <= coded_height <= height):
        raise MaskWireError(f"coded size {coded_width}x{coded_height} for a {width}x{height} mask")
    try:
        coded = _mask_coder.decode(body[_HEADER_V2.size :], coded_width, coded_height, None)
    except ValueError as error:
        raise MaskWireError(str(error)) from error
    if mode == MODE_REDUCED:
        return _upsample(coded, coded_width, coded_height, width, height, guide)
    return np.frombuffer(coded, np.uint8).reshape(height, width)


def _upsample(
    coded: bytes,
    coded_width: int,
    coded_height: int,
    width: int,
    height: int,
    guide: np.ndarray | None = None,
) -> np.ndarray:
    if guide is not None:
        guide = np.ascontiguousarray(guide)
    full = _mask_coder.upsample(coded, coded_width, coded_height, width, height, guide, GUIDE_SIGMA)
    return np.frombuffer(full, np.uint8).reshape(height, width)


def movable_classes(mask: np.ndarray, protected_share: float) -> int:
    """The set (bit k = class k) of classes large enough (at least `protected_share` of the
    mask's pixels, ids below 64) that a near-lossless coding may move their boundaries."""
    counts = np.bincount(mask.reshape(-1), minlength=256)[: _MAX_MOVABLE_CLASS + 1]
    large = np.flatnonzero(counts >= protected_share * mask.size)
    return int(sum(1 << int(k) for k in large))


# --- version 1: run-length + deflate ---------------------------------------------------------


def _encode_rle(mask: np.ndarray) -> bytes:
    height, width = mask.shape
    flat = mask.reshape(-1)
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    if lengths.max() > _MAX_RUN:  # split runs too long for three varint bytes
        repeats = -(-lengths // _MAX_RUN)
        ids = np.repeat(flat[starts], repeats)
        pieces = np.full(int(repeats.sum()), _MAX_RUN, dtype=np.int64)
        last = np.cumsum(repeats) - 1
        pieces[last] = lengths - (repeats - 1) * _MAX_RUN
        values, lengths = ids, pieces
    else:
        values = flat[starts]
    payload = values.tobytes() + _varints(lengths)
    body = _HEADER_V1.pack(RLE_DEFLATE_VERSION, width, height, len(values))
    body += zlib.compress(payload, 6)
    return body + _CRC.pack(zlib.crc32(body))


def _decode_rle(body: bytes, width: int, height: int) -> np.ndarray:
    pixels = width * height
    runs = _HEADER_V1.unpack_from(body)[3]
    if not 1 <= runs <= pixels:
        raise MaskWireError(f"{runs} runs cannot make a {width}x{height} mask")
    limit = runs * (1 + _MAX_VARINT_BYTES)
    inflater = zlib.decompressobj()
    try:
        payload = inflater.decompress(body[_HEADER_V1.size :], limit + 1)
    except zlib.error as error:
        raise MaskWireError(f"the runs do not inflate: {error}") from error
    if len(payload) > limit or not inflater.eof:
        raise MaskWireError("the runs are longer than the header allows")
    values = np.frombuffer(payload[:runs], np.uint8)
    if len(values) != runs:
        raise MaskWireError("truncated mask: class ids missing")
    lengths = _read_varints(payload[runs:], runs)
    if int(lengths.sum()) != pixels or lengths.min() < 1:
        raise MaskWireError(f"the run lengths do not cover {width}x{height} pixels")
    return np.repeat(values, lengths).reshape(height, width)


def _varints(values: np.ndarray) -> bytes:
    """LEB128 of each value (< 2^21), vectorised."""
    values = values.astype(np.int64)
    count = 1 + (values >= 1 << 7) + (values >= 1 << 14)
    table = np.stack(
        [
            (values & 0x7F) | np.where(count > 1, 0x80, 0),
            ((values >> 7) & 0x7F) | np.where(count > 2, 0x80, 0),
            (values >> 14) & 0x7F,
        ],
        axis=1,
    ).astype(np.uint8)
    return table[np.arange(_MAX_VARINT_BYTES)[None, :] < count[:, None]].tobytes()


def _read_varints(data: bytes, count: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    last = np.flatnonzero(raw < 0x80)  # the final byte of each varint
    if len(last) != count or (len(last) and last[-1] != len(raw) - 1):
        raise MaskWireError(f"expected {count} run lengths in {len(raw)} bytes")
    first = np.concatenate(([0], last[:-1] + 1))
    width = last - first + 1
    if len(width) and width.max() > _MAX_VARINT_BYTES:
        raise MaskWireError("a run length longer than three bytes")
    padded = np.zeros((count, _MAX_VARINT_BYTES), np.int64)
    for position in range(_MAX_VARINT_BYTES):
        has = width > position
        padded[has, position] = raw[first[has] + position] & 0x7F
    return padded[:, 0] | (padded[:, 1] << 7) | (padded[:, 2] << 14)
