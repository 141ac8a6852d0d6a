"""The champion model in memory: loading a ``model.tar.gz``, choosing fp32 or bf16, scoring a batch.

A :class:`LoadedModel` is never mutated after it is built, so a batch that took a reference to one keeps scoring
with that version even while a hot swap installs the next one.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.model import forward_with_embedding, load_model_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to score: module (eval mode), its config, version, operating threshold and precision."""

    module: nn.Module
    config: dict[str, Any]
    version: int
    threshold: float
    precision: str
    input_size: int
    load_ms: float = 0.0
    probe: dict[str, float] = field(default_factory=dict)

    @cached_property
    def explainer(self) -> nn.Module:
        """A private copy of the module for Grad-CAM.

        Grad-CAM registers forward hooks and runs with gradients; on the shared module those hooks would also fire
        inside a concurrent scoring batch (no-grad, another thread) and mix that batch's activations into the map.
        """
        return copy.deepcopy(self.module).to(memory_format=torch.contiguous_format)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (shape N) for an N×S×S float32 batch of preprocessed frames."""
        return self.predict_with_embedding(batch)[0]

    def predict_with_embedding(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities N, penultimate-layer embeddings N×D) in the same forward pass (the embedding feeds drift)."""
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1)
        x = x.contiguous(memory_format=torch.channels_last)
        return _forward_with_embedding(self.module, x, self.precision)


def _forward_with_embedding(module: nn.Module, x: torch.Tensor, precision: str) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                emb, logits = forward_with_embedding(module, x)
        else:
            emb, logits = forward_with_embedding(module, x)
        probs = torch.sigmoid(logits.float().reshape(-1)).numpy().astype(np.float64)
        return probs, emb.float().numpy()


def _forward(module: nn.Module, x: torch.Tensor, precision: str) -> np.ndarray:
    return _forward_with_embedding(module, x, precision)[0]


def cpu_has_bf16() -> bool:
    """Whether the CPU has native bf16 matrix instructions (AMX or AVX-512 BF16); without them bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def choose_precision(module: nn.Module, size: int, batch: int, requested: str, tolerance: float) -> tuple[str, dict]:
    """fp32 or bf16. ``auto`` times both on a probe batch and keeps bf16 only if faster and within ``tolerance``."""
    if requested != "auto":
        return requested, {}
    if not cpu_has_bf16():
        return "fp32", {"reason": 0.0}
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen).contiguous(memory_format=torch.channels_last)
    timings: dict[str, float] = {}
    outs: dict[str, np.ndarray] = {}
    for prec in ("fp32", "bf16"):
        for _ in range(2):  # warm-up: oneDNN builds its bf16 kernels over the first calls
            _forward(module, x, prec)
        best = float("inf")
        for _ in range(2):  # best of two: the CPU may be shared, the minimum is the least disturbed
            t0 = time.perf_counter()
            outs[prec] = _forward(module, x, prec)
            best = min(best, time.perf_counter() - t0)
        timings[prec] = best
    diff = float(np.max(np.abs(outs["fp32"] - outs["bf16"])))
    probe = {"fp32_s": timings["fp32"], "bf16_s": timings["bf16"], "max_abs_diff": diff}
    chosen = "bf16" if timings["bf16"] < 0.9 * timings["fp32"] and diff <= tolerance else "fp32"
    return chosen, probe


def load_model_artifact(
    data: bytes, *, version: int, threshold: float | None = None, precision: str = "auto", batch: int = 16,
    tolerance: float = 0.02,
) -> LoadedModel:
    """Build a :class:`LoadedModel` from the bytes of a ``model.tar.gz`` (blocking: call it in a thread).

    ``threshold`` is the champion pointer's operating threshold; without one, the artefact's ``config.json`` holds it.
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radloop-model-") as tmp:
        path = os.path.join(tmp, "model.tar.gz")  # load_model_dir recognises the archive by its suffix
        with open(path, "wb") as f:
            f.write(data)
        module, config = load_model_dir(path)
    size = int(config.get("input_size", 224))
    module = module.to(memory_format=torch.channels_last).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    chosen, probe = choose_precision(module, size, batch, precision, tolerance)
    thr = float(threshold if threshold is not None else config.get("threshold", 0.5))
    lm = LoadedModel(module=module, config=config, version=version, threshold=thr, precision=chosen,
                     input_size=size, load_ms=(time.perf_counter() - t0) * 1000, probe=probe)
    log.info("model loaded", extra={"model_version": lm.version, "precision": chosen, "input_size": size,
                                     "load_ms": round(lm.load_ms, 1), **{f"probe_{k}": v for k, v in probe.items()}})
    return lm

