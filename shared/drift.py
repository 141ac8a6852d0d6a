"""Input and prediction drift: the features, the reference a training run records, and PSI against it.

One module for both sides, so the features cannot drift apart: training summarises its training images and its
validation scores (:func:`build_reference`, stored in the model's ``config.json`` under ``drift_reference``), and
triage compares a rolling window of the images it scores, per site and modality, with that reference
(:class:`DriftMonitor`).

- **Input drift:** statistics of the *model input* (the output of :func:`shared.preprocessing.preprocess`, the same
  function on both sides): mean, standard deviation, 5th and 95th percentile of intensity. A site whose scanner,
  exposure or collimation differ from the training data moves them.
- **Embedding drift:** the model's penultimate-layer embedding (the pooled features its last layer reads), projected
  on the reference's first :data:`EMBEDDING_COMPONENTS` principal components (``embedding_pc1``...). This sees shifts
  that the model itself notices but global intensity does not (anatomy, positioning, text markers).
- **Prediction drift:** the distribution of the model's probability.
- **The measure:** the population stability index over the reference's deciles,
  ``PSI = sum((a - e) * ln(a / e))``. By the usual reading, < 0.1 is stable, 0.1-0.25 a moderate shift, > 0.25 a
  shift worth acting on (the default alert level).

A reference built without embeddings (or an older artefact) watches the other features only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The features every reference has; ``score`` is the prediction, the others describe the model input.
FEATURES: tuple[str, ...] = ("intensity_mean", "intensity_std", "intensity_p05", "intensity_p95", "score")
#: Reference bins: the reference's deciles.
BINS = 10
#: Floor of a bin's share, so that an empty bin does not make PSI infinite.
EPS = 1e-4
REFERENCE_VERSION = 1
#: Principal components of the embedding that are watched (each a feature ``embedding_pc<k>``).
EMBEDDING_COMPONENTS = 4
#: The features a reference built with embeddings adds to :data:`FEATURES`.
EMBEDDING_FEATURES: tuple[str, ...] = tuple(f"embedding_pc{k + 1}" for k in range(EMBEDDING_COMPONENTS))


def image_features(x: np.ndarray) -> dict[str, float]:
    """The input features of one preprocessed image (an S×S float array)."""
    flat = np.asarray(x, dtype=np.float32).ravel()
    p05, p95 = np.percentile(flat, [5, 95])
    return {"intensity_mean": float(flat.mean()), "intensity_std": float(flat.std()),
            "intensity_p05": float(p05), "intensity_p95": float(p95)}


def build_reference(images: np.ndarray, scores: np.ndarray,
                    embeddings: np.ndarray | None = None) -> dict[str, Any]:
    """The drift reference of a training run: deciles and shares of every feature.

    ``images``: the training split's model inputs (N×S×S or N×1×S×S); ``scores``: the model's probabilities on the
    validation split (the population it was selected on); ``embeddings``: its penultimate-layer embeddings of the same
    validation images (M×D), summarised by their mean and first principal components."""
    if len(images) == 0 or len(scores) == 0:
        raise ValueError("a drift reference needs images and scores")
    imgs = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    p05, p95 = np.percentile(imgs, [5, 95], axis=1)
    columns = {"intensity_mean": imgs.mean(axis=1), "intensity_std": imgs.std(axis=1), "intensity_p05": p05,
               "intensity_p95": p95, "score": np.asarray(scores, dtype=np.float64)}
    out: dict[str, Any] = {"version": REFERENCE_VERSION, "images": len(imgs), "scores": len(scores), "features": {}}
    if embeddings is not None and len(embeddings) > EMBEDDING_COMPONENTS:
        emb = np.asarray(embeddings, dtype=np.float64).reshape(len(embeddings), -1)
        mean = emb.mean(axis=0)
        _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
        components = vt[:EMBEDDING_COMPONENTS]
        out["embedding"] = {"mean": [round(float(v), 6) for v in mean],
                            "components": [[round(float(v), 6) for v in c] for c in components]}
        projected = embedding_features(out, emb)
        columns.update(projected)
    for name in columns:
        values = np.asarray(columns[name], dtype=np.float64)
        # The edges are stored rounded, and live values are binned with the stored edges: the expected shares are
        # computed with those same edges (with the unrounded ones, a confident model's scores, whose deciles all
        # round to 0.000001, drifted from their own validation set: PSI 1.56; found by a review).
        edges = np.unique(np.round(np.quantile(values, np.linspace(0, 1, BINS + 1)[1:-1]), 6))
        out["features"][name] = {"edges": [float(e) for e in edges],
                                 "expected": [round(float(s), 6) for s in _shares(edges, values)]}
    return out


def embedding_features(reference: dict[str, Any], embeddings: np.ndarray) -> dict[str, Any]:
    """The embedding features (``embedding_pc1``...) of one embedding (D) or many (N×D): projections on the reference's
    principal components. Empty when the reference has no embedding summary or the dimension differs."""
    summary = reference.get("embedding")
    if not summary:
        return {}
    emb = np.asarray(embeddings, dtype=np.float64)
    mean = np.asarray(summary["mean"], dtype=np.float64)
    if emb.shape[-1] != mean.shape[0]:
        return {}
    proj = (emb - mean) @ np.asarray(summary["components"], dtype=np.float64).T
    if proj.ndim == 1:
        return {f"embedding_pc{k + 1}": float(v) for k, v in enumerate(proj)}
    return {f"embedding_pc{k + 1}": proj[:, k] for k in range(proj.shape[1])}


def _shares(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges, values, side="right")
    return np.bincount(idx, minlength=len(edges) + 1) / max(len(values), 1)


def psi(feature_reference: dict[str, Any], values: np.ndarray | list[float]) -> float:
    """Population stability index of ``values`` against one feature's reference (its edges and expected shares)."""
    edges = np.asarray(feature_reference["edges"], dtype=np.float64)
    expected = np.clip(np.asarray(feature_reference["expected"], dtype=np.float64), EPS, None)
    actual = np.clip(_shares(edges, np.asarray(values, dtype=np.float64)), EPS, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def site_key(meta: dict[str, Any], key: str) -> str:
    """A pseudonymous, stable key of the acquiring site and device, from the instance's DICOM JSON: a keyed hash
    (HMAC-SHA256 with the deployment's pseudonym key, as patient pseudonyms) of InstitutionName, StationName,
    Manufacturer and ManufacturerModelName, so nobody without the key can tell a site from its key by hashing the
    names of known hospitals. Where de-identification removed the first two, the key is per device model."""
    parts = []
    for tag in ("00080080", "00081010", "00080070", "00081090"):
        value = ((meta.get(tag) or {}).get("Value") or [""])[0]
        parts.append(str(value).strip())
    return "site-" + hmac.new(key.encode(), "|".join(parts).encode(), hashlib.sha256).hexdigest()[:10]


@dataclass(frozen=True)
class DriftPolicy:
    """When a window is compared and what counts as drift."""

    #: images per (site, modality) window (the most recent ones)
    window: int = 500
    #: no comparison before a window holds this many images
    min_images: int = 200
    #: compare every this many new images of a window
    check_every: int = 50
    #: PSI at or above this is drift
    psi_alert: float = 0.25
    #: the most (site, modality) windows kept (sites come from the DICOM header, so their number is bounded here);
    #: the least recently seen window is dropped beyond it
    max_windows: int = 200


@dataclass
class DriftFinding:
    """One feature of one window at or above the alert level."""

    site: str
    modality: str
    feature: str
    psi: float
    window_images: int


@dataclass
class DriftMonitor:
    """Rolling windows of features per (site, modality), compared with one model's reference."""

    policy: DriftPolicy
    reference: dict[str, Any] | None = None
    _windows: dict[tuple[str, str], deque[dict[str, float]]] = field(default_factory=dict)
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the latest PSI of every (site, modality, feature) compared
    latest: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def use(self, reference: dict[str, Any] | None) -> None:
        """Compare with ``reference`` from now on (a new champion): the windows start again, since the score
        distribution belongs to the model that produced it."""
        if reference is not self.reference:
            self.reference = reference
            self._windows.clear()
            self._seen.clear()
            self.latest.clear()

    def observe(self, site: str, modality: str, features: dict[str, float]) -> DriftCheck | None:
        """Add one image's features; every ``check_every`` images of a full enough window, compare it with the
        reference. Returns the comparison (PSI per feature, and the features at or above the alert level), or None
        when this image did not complete a comparison."""
        if self.reference is None:
            return None
        key = (site, modality)
        window = self._windows.pop(key, None)  # re-inserted last: the dict's order is least recently seen first
        if window is None:
            window = deque(maxlen=self.policy.window)
            while len(self._windows) >= self.policy.max_windows:
                old = next(iter(self._windows))
                del self._windows[old]
                self._seen.pop(old, None)
                for k in [k for k in self.latest if k[:2] == old]:
                    del self.latest[k]
        self._windows[key] = window
        window.append(features)
        self._seen[key] = self._seen.get(key, 0) + 1
        if len(window) < self.policy.min_images or self._seen[key] % self.policy.check_every:
            return None
        check = DriftCheck(site, modality, len(window))
        for name, ref in self.reference.get("features", {}).items():
            values = [f[name] for f in window if name in f]
            if len(values) < self.policy.min_images:
                continue
            value = round(psi(ref, values), 4)
            check.psi[name] = value
            self.latest[(site, modality, name)] = value
            if value >= self.policy.psi_alert:
                check.findings.append(DriftFinding(site, modality, name, value, len(values)))
        return check


@dataclass
class DriftCheck:
    """One comparison of one (site, modality) window with the reference."""

    site: str
    modality: str
    window_images: int
    psi: dict[str, float] = field(default_factory=dict)
    findings: list[DriftFinding] = field(default_factory=list)
