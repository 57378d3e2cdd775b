"""A frame's class ids from a segmentation model's low-resolution logits, without torch.

Many segmentation networks compute their logits at a fraction of the input's resolution
(the shipped EfficientNet-Lite0 + FPN at stride 4) and then resize them bilinearly to the
frame, crop, and take the argmax: on a CPU that float tail costs a third of an int8 forward.
`LogitChain` describes that tail (per axis: bilinear up to `upsampled`, keep the first
`cropped`, bilinear to `out`; PyTorch's `F.interpolate(mode="bilinear",
align_corners=False)` semantics, no antialias) and `class_ids_from_logits` computes its result
directly: both axes are separable, so each output row and column is a short run of
low-resolution rows and columns with weights (the composed 1-D interpolation matrices, computed
exactly in integers), and a C++ loop (`_logit_labels`) takes the argmax. Where every
low-resolution pixel in a pixel's support has the same argmax, that class is the answer (a
convex combination keeps the per-pixel winner); elsewhere all K logits are interpolated.

Agreement with torch's interpolate + argmax: exact but for near-ties (float32 rounding differs
by ~1e-6 of the logits' scale); ties go to the lowest class id, as torch's argmax.

A chain serialises to eight integers (`to_ints` / `from_ints`), so both ends of a link can
hold it: the edge, which runs the model, and the robot, which can rebuild a mask from sparse
low-resolution logits with this module (numpy and the extension only).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stac_codec.extensions import load_extension

_logit_labels = load_extension("_logit_labels")

MAX_SIDE = 16384  # pixels a side, as the masks' wire form
MAX_CLASSES = 256  # class ids are uint8
CHAIN_INTS = 8


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class AxisChain:
    """One axis of the tail: `low` logits, bilinear to `upsampled` (equal: no resize), the
    first `cropped` of those kept, bilinear to `out` (equal to `cropped`: no resize)."""

    low: int
    upsampled: int
    cropped: int
    out: int

    def __post_init__(self) -> None:
        for name in ("low", "upsampled", "cropped", "out"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_SIDE:
                raise ValueError(f"{name} must be an integer in 1..{MAX_SIDE}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.cropped > self.upsampled:
            raise ValueError(
                f"cannot crop {self.cropped} from {self.upsampled} (the crop keeps the first "
                f"`cropped` of `upsampled`)"
            )

    def taps(self) -> AxisTaps:
        """Each output index's low-resolution support and weights (cached per chain)."""
        return _axis_taps(self)


@dataclass(frozen=True)
class AxisTaps:
    """start, count: int32 per output index, its support is low indices start..start+count-1;
    weights: float32 out x width (the first `count` used; they sum to 1)."""

    start: np.ndarray
    count: np.ndarray
    weights: np.ndarray

    @property
    def width(self) -> int:
        return self.weights.shape[1]


def _resize_matrix(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """PyTorch's bilinear (align_corners=False) resize of one axis as integers: output i reads
    inputs i0[i], i1[i] with weights w0[i], w1[i] over `denominator`. The source coordinate
    (i + 0.5) * in / out - 0.5 is exact here: torch rounds it to float32."""
    denominator = 2 * size_out
    source = np.maximum(size_in * (2 * np.arange(size_out, dtype=np.int64) + 1) - size_out, 0)
    i0 = np.minimum(source // denominator, size_in - 1)
    fraction = np.clip(source - i0 * denominator, 0, denominator)
    i1 = np.minimum(i0 + 1, size_in - 1)
    return np.stack([i0, i1], 1), np.stack([denominator - fraction, fraction], 1), denominator


@functools.lru_cache(maxsize=64)
def _axis_taps(chain: AxisChain) -> AxisTaps:
    first_index, first_weight, first_denominator = _resize_matrix(chain.low, chain.upsampled)
    second_index, second_weight, second_denominator = _resize_matrix(chain.cropped, chain.out)
    # output o reads cropped p = second_index[o, a] (a < cropped <= upsampled), which reads
    # low = first_index[p, b]: four (index, weight) pairs per output, some the same index
    index = first_index[second_index].reshape(chain.out, 4)
    weight = (second_weight[:, :, None] * first_weight[second_index]).reshape(chain.out, 4)
    start = np.where(weight > 0, index, chain.low).min(1)
    stop = np.where(weight > 0, index, -1).max(1) + 1
    width = int((stop - start).max())
    dense = np.zeros((chain.out, width), np.int64)
    rows = np.broadcast_to(np.arange(chain.out)[:, None], index.shape)
    np.add.at(dense, (rows, np.clip(index - start[:, None], 0, width - 1)), weight * (weight > 0))
    taps = AxisTaps(
        start=start.astype(np.int32),
        count=(stop - start).astype(np.int32),
        weights=(dense / (first_denominator * second_denominator)).astype(np.float32),
    )
    for array in (taps.start, taps.count, taps.weights):
        array.flags.writeable = False  # shared by every caller of the cache
    return taps


@dataclass(frozen=True)
class LogitChain:
    """The tail from K x low_height x low_width logits to the frame's out_height x out_width
    class ids, one AxisChain per axis."""

    rows: AxisChain
    cols: AxisChain

    @classmethod
    def of(
        cls,
        low: tuple[int, int],
        upsampled: tuple[int, int] | None = None,
        cropped: tuple[int, int] | None = None,
        out: tuple[int, int] | None = None,
    ) -> LogitChain:
        """From (height, width) pairs; a step left out is none (the size before it)."""
        upsampled = upsampled or low
        cropped = cropped or upsampled
        out = out or cropped
        sizes = (low, upsampled, cropped, out)
        if not all(isinstance(s, tuple | list) and len(s) == 2 for s in sizes):
            raise ValueError(f"expected (height, width) pairs, got {sizes!r}")
        return cls(AxisChain(*(s[0] for s in sizes)), AxisChain(*(s[1] for s in sizes)))

    @property
    def low_shape(self) -> tuple[int, int]:
        return self.rows.low, self.cols.low

    @property
    def out_shape(self) -> tuple[int, int]:
        return self.rows.out, self.cols.out

    def to_ints(self) -> tuple[int, ...]:
        """(low, upsampled, cropped, out) of the rows, then of the columns."""
        return tuple(
            getattr(axis, name)
            for axis in (self.rows, self.cols)
            for name in ("low", "upsampled", "cropped", "out")
        )

    @classmethod
    def from_ints(cls, values: Iterable[int]) -> LogitChain:
        """The chain `to_ints` gave; ValueError for anything that is not one."""
        values = tuple(values)
        if len(values) != CHAIN_INTS:
            raise ValueError(f"a logit chain is {CHAIN_INTS} integers, got {len(values)}")
        return cls(AxisChain(*values[:4]), AxisChain(*values[4:]))


def class_ids_from_logits(logits: np.ndarray, chain: LogitChain) -> np.ndarray:
    """float32 K x low_height x low_width logits -> uint8 out_height x out_width class ids,
    what `F.interpolate` through the chain and then argmax over K give (up to near-ties).
    ValueError for logits that are not finite float32 of the chain's low shape, or K > 256."""
    if not isinstance(chain, LogitChain):
        raise ValueError(f"expected a LogitChain, got {type(chain).__name__}")
    logits = np.asarray(logits)
    if logits.dtype != np.float32 or logits.ndim != 3:
        raise ValueError(f"expected float32 K x H x W logits, got {logits.dtype} {logits.shape}")
    classes = logits.shape[0]
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"{classes} classes: class ids hold 1..{MAX_CLASSES}")
    if logits.shape[1:] != chain.low_shape:
        raise ValueError(
            f"logits of {logits.shape[1]}x{logits.shape[2]} for a chain from "
            f"{chain.low_shape[0]}x{chain.low_shape[1]}"
        )
    logits = np.ascontiguousarray(logits)
    if not np.isfinite(logits).all():
        raise ValueError("logits must be finite (NaN or infinity has no argmax to agree on)")
    rows, cols = chain.rows.taps(), chain.cols.taps()
    height, width = chain.out_shape
    labels = np.empty((height, width), np.uint8)
    _logit_labels.class_ids(
        logits, classes, *chain.low_shape,
        rows.start, rows.count, rows.weights, rows.width, height,
        cols.start, cols.count, cols.weights, cols.width, width, labels,
    )  # fmt: skip
    return labels
