"""What STAC fixes offline, stored next to the model: the file the online allocator reads.

The paper generates part of the compression strategy offline so that the edge, online, only
computes gradients and picks levels. Here the offline part (stac-calibrate, in stac_eval) fixes
for a given model: the rate model of the rate-aware rule (rate_exponent, energy_floor, measured
from x264), the offset scale alpha, the clamp dmax, the level bank, the smoothing, per-class
loss weights and the encoder's x264 AQ strength, by measuring mIoU per bit on frames that are
neither in the model's training set nor in any reported set (stac-calibrate refuses the
training frames when it can tell). A model without a calibration file gets the settings of
the project's first feasibility experiment on CamVid (alpha 0.5, dmax 10, no smoothing, no
rate term, map only).

What the robot must apply: `aq_strength` (x264 AQ mode 1 at that strength; 0.001 = the map
alone sets the quantizers). Everything else acts on the edge, inside the map it sends.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from stac_codec.h264_encoder import OFFSETS_ONLY_AQ_STRENGTH
from stac_sensitivity.allocation import AllocationConfig

CALIBRATION_FORMAT = "stac-calibration-v1"
CALIBRATION_SUFFIX = ".stac_calibration.json"
# x264 reads the map only with AQ on; this strength makes its own variance AQ negligible.
MAP_ONLY_AQ_STRENGTH = OFFSETS_ONLY_AQ_STRENGTH


class CalibrationError(ValueError):
    """A calibration file that is missing fields, has another format, or bad values."""


@dataclass(frozen=True)
class Calibration:
    """Offline-fixed STAC settings for one model.

    class_weights: fixed per-class weights of the cross-entropy in the sensitivity (None =
        plain).
    class_weight_exponent: > 0: each frame's pixels weighted by their predicted class's
        frequency in that frame to this power, negated (sensitivity.py); 0 = off.
    aq_strength: x264 AQ strength to encode with (0.001 = the map alone sets the quantizers).
    rate_exponent, energy_floor: the rate-slope model of the rate-aware rule (allocation.py);
        rate_exponent 0 = STAC's original rule.
    provenance: how the file was made (frames, sweep, objective, search log), for the record.
    """

    alpha: float = 0.5
    max_offset_qp: int = 10
    levels_qp: tuple[int, ...] = ()
    smoothing_sigma_mb: float = 0.0
    class_weights: tuple[float, ...] | None = None
    class_weight_exponent: float = 0.0
    aq_strength: float = MAP_ONLY_AQ_STRENGTH
    rate_exponent: float = 0.0
    energy_floor: float = 1.0
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        config = self.allocation_config()  # validates alpha, dmax, levels, smoothing
        object.__setattr__(self, "levels_qp", config.levels_qp)
        if self.class_weights is not None:
            weights = np.asarray(self.class_weights, dtype=np.float64)
            if weights.ndim != 1 or not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise CalibrationError("class_weights must be a list of finite values >= 0")
        if not 0.0 <= self.class_weight_exponent <= 4.0:
            raise CalibrationError(
                f"class_weight_exponent must be in [0, 4], got {self.class_weight_exponent}"
            )
        if not 0.0 < self.aq_strength <= 3.0:
            raise CalibrationError(f"aq_strength must be in (0, 3], got {self.aq_strength}")

    def allocation_config(self, budget_shift_qp: int = 0) -> AllocationConfig:
        """The allocator settings this calibration stands for."""
        return AllocationConfig(
            alpha=self.alpha,
            max_offset_qp=self.max_offset_qp,
            levels_qp=self.levels_qp,
            smoothing_sigma_mb=self.smoothing_sigma_mb,
            budget_shift_qp=budget_shift_qp,
            rate_exponent=self.rate_exponent,
            energy_floor=self.energy_floor,
        )


def default_calibration_path(weights_path: str | Path) -> Path:
    """Where the calibration of a weights file lives: beside it, `<stem>.stac_calibration.json`."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + CALIBRATION_SUFFIX)


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    path = Path(path)
    data = {"format": CALIBRATION_FORMAT, **asdict(calibration)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> Calibration:
    """Read a file written by save_calibration; CalibrationError on anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:  # ValueError: JSON, UTF-8
        raise CalibrationError(f"cannot read calibration {path}: {error}") from error
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise CalibrationError(f"{path} is not a {CALIBRATION_FORMAT} file")
    data.pop("format")
    problem = _field_type_problem(data)
    if problem:
        raise CalibrationError(f"bad calibration {path}: {problem}")
    try:
        data["levels_qp"] = tuple(data["levels_qp"])
        if data.get("class_weights") is not None:
            data["class_weights"] = tuple(data["class_weights"])
        return Calibration(**data)
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise CalibrationError(f"bad calibration {path}: {error}") from error


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _field_type_problem(data: dict) -> str:
    """What is wrong with the JSON types of a calibration's fields ("" when nothing): finite
    numbers where numbers belong (JSON's NaN and Infinity included), integers for QPs, lists."""
    numbers = (
        "alpha",
        "smoothing_sigma_mb",
        "aq_strength",
        "rate_exponent",
        "energy_floor",
        "class_weight_exponent",
    )
    for key in numbers:
        if key in data and not _is_number(data[key]):
            return f"{key} must be a finite number, got {data[key]!r}"
    integers = [("max_offset_qp", data.get("max_offset_qp", 0))]
    levels = data.get("levels_qp", [])
    if not isinstance(levels, list):
        return f"levels_qp must be a list of integers, got {levels!r}"
    integers += [("levels_qp", level) for level in levels]
    for key, value in integers:
        if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 255:
            return f"{key} must hold integers (QP offsets), got {value!r}"
    weights = data.get("class_weights")
    if weights is not None and (
        not isinstance(weights, list) or not all(_is_number(w) for w in weights)
    ):
        return f"class_weights must be null or a list of finite numbers, got {weights!r}"
    if not isinstance(data.get("provenance", {}), dict):
        return f"provenance must be a mapping, got {data['provenance']!r}"
    return ""


def find_calibration(weights_path: str | Path | None) -> tuple[Calibration, Path | None]:
    """The calibration beside the weights, or the built-in defaults (path None) if none."""
    if weights_path is not None:
        path = default_calibration_path(weights_path)
        if path.is_file():
            return load_calibration(path), path
    return Calibration(), None
