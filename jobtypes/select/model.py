"""The class score: a small calibrated network on class-ranker features, in NumPy.

Input per class: the 24 normalised class-ranker inputs (RELION's ``classFeatures::toNormalizedVector``) plus a few
scale-free image and size statistics (:data:`EXTRA_INPUTS`). The network is one hidden
tanh layer and a logistic output; a Platt calibration fitted on held-out classes maps its
logit to a probability that the class is good, so among classes scored ``s`` about a
fraction ``s`` are good. Weights live in a small ``.npz`` (:data:`DEFAULT_WEIGHTS` ships
with the package); :mod:`emclass2d.tools.train_ranker` writes new ones.

Example::

    model = RankerModel.load()                 # shipped weights
    X = model_inputs(features)                 # features: list of dicts, one per class
    scores = model.predict(X)                  # (K,) in [0, 1]

See also: :mod:`emclass2d.core.ranker_features`.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emclass2d.core.ranker_features import VECTOR_FEATURES, normalized_vectors

#: Weights shipped with the package.
DEFAULT_WEIGHTS = Path(__file__).with_name("ranker_weights.npz")
#: Scale-free statistics appended to the 24 normalised inputs.
EXTRA_INPUTS: tuple[str, ...] = (
    "log10_particles", "log_relative_distribution", "protein_area_fraction", "protein_contrast",
    "solvent_to_protein_stddev", "ring_to_protein_stddev", "ring_skew", "solvent_kurt", "log_resolution_ratio",
)
#: Rotational accuracy (deg) above which the input no longer changes. The in-plane angle of
#: a good class is poorly defined when its view is (nearly) rotationally symmetric: top
#: views of Cn complexes, round or featureless particles. Its accuracy then says nothing
#: about quality, so only the range where a precise angle is positive evidence is kept.
ROTATION_ACCURACY_CAP_DEG = 3.0
INPUT_NAMES: tuple[str, ...] = ((f"accuracy_rotation_deg_max{ROTATION_ACCURACY_CAP_DEG:g}",) + VECTOR_FEATURES[1:]
                                + EXTRA_INPUTS)


class WeightsError(ValueError):
    """A weights file is missing or not a class-score model."""


def extra_inputs(f: Mapping[str, float], nr_classes: int) -> list[float]:
    """The :data:`EXTRA_INPUTS` of one class from its feature dict."""
    eps = 1e-6
    disc_area = math.pi * float(f["radius_px"]) ** 2
    p_sd, s_sd = float(f["protein_stddev"]), float(f["solvent_stddev"])
    contrast = (float(f["protein_mean"]) - float(f["solvent_mean"])) / (s_sd + 0.05 * abs(float(f["lowpass_stddev"])) + eps)
    return [
        math.log10(max(float(f["particle_nr"]), 1.0)),
        math.log(max(float(f["class_distribution"]) * nr_classes, 1e-4)),
        float(f["protein_area"]) / max(disc_area, 1.0),
        float(np.clip(contrast, -50, 50)) / 10.0,
        float(np.clip(s_sd / (p_sd + eps), 0, 10)) if f["protein_area"] > 0 else 10.0,
        float(np.clip(float(f["ring_stddev"]) / (p_sd + eps), 0, 10)) if f["protein_area"] > 0 else 10.0,
        float(np.clip(f["ring_skew"], -10, 10)),
        float(np.clip(math.log(max(float(f["solvent_kurt"]), 1e-3)), -5, 5)),
        math.log(max(float(f["relative_resolution"]), 1e-3)),
    ]


def model_inputs(features: Sequence[Mapping[str, float]]) -> np.ndarray:
    """``(K, 33)`` model input of the scored classes of one job (the order of ``features``).

    The last three normalised inputs are z-scored across these classes, so pass all the
    scored classes of a job together. The rotational accuracy is capped at
    :data:`ROTATION_ACCURACY_CAP_DEG`; inputs are clipped to ±10 (robust to outliers).
    """
    if len(features) == 0:
        return np.zeros((0, len(INPUT_NAMES)))
    k = len(features)
    capped = [{**f, "accuracy_rotation_deg": min(float(f["accuracy_rotation_deg"]), ROTATION_ACCURACY_CAP_DEG)}
              for f in features]
    extra = np.array([extra_inputs(f, max(k, int(f.get("nr_classes", k)))) for f in features])
    return np.clip(np.hstack([normalized_vectors(capped), extra]), -10, 10)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass
class RankerModel:
    """Standardisation, one-hidden-layer network and Platt calibration (all float64)."""

    input_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    w1: np.ndarray  #: (D, H)
    b1: np.ndarray  #: (H,)
    w2: np.ndarray  #: (H,)
    b2: float
    platt_a: float = 1.0
    platt_b: float = 0.0
    source: str = ""

    def logit(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated network logit ``(K,)``."""
        h = np.tanh(((np.asarray(X, dtype=np.float64) - self.mean) / self.std) @ self.w1 + self.b1)
        return h @ self.w2 + self.b2

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Calibrated score in [0, 1] per row of ``X``."""
        if len(X) == 0:
            return np.zeros(0)
        return _sigmoid(self.platt_a * self.logit(X) + self.platt_b)

    def save(self, path: str | os.PathLike[str]) -> None:
        np.savez(path, input_names=np.array(self.input_names), mean=self.mean, std=self.std, w1=self.w1,
                 b1=self.b1, w2=self.w2, b2=np.float64(self.b2), platt=np.array([self.platt_a, self.platt_b]))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "RankerModel":
        """Load weights (default: the shipped file); raises :class:`WeightsError`."""
        p = Path(path) if path else DEFAULT_WEIGHTS
        if not p.is_file():
            raise WeightsError(f"{p}: class score weights not found"
                               + ("" if path else " (train them: python -m emclass2d.tools.train_ranker --out "
                                  f"{DEFAULT_WEIGHTS})"))
        try:
            with np.load(p, allow_pickle=False) as z:
                names = tuple(str(s) for s in z["input_names"])
                model = cls(names, z["mean"], z["std"], z["w1"], z["b1"], z["w2"], float(z["b2"]),
                            float(z["platt"][0]), float(z["platt"][1]), source=str(p))
        except (KeyError, ValueError, OSError) as exc:
            raise WeightsError(f"{p}: not a class score weights file ({exc})") from exc
        if names != INPUT_NAMES:
            raise WeightsError(f"{p}: weights were trained on other inputs ({len(names)} named inputs); "
                               "retrain with python -m emclass2d.tools.train_ranker")
        return model


def weights_hash(path: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 (first 16 hex digits) of a weights file (default: the shipped one)."""
    p = Path(path) if path else DEFAULT_WEIGHTS
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "none"
