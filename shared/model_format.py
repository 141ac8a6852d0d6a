"""The model artefact format: what ``model.tar.gz`` holds, read and written by training, triage and the registry.

- ``weights.pt``: the PyTorch ``state_dict`` (CPU tensors), loaded with ``weights_only=True``;
- ``config.json``: :func:`default_config` (architecture, input size, operating threshold, classes, channels);
- ``model_card.json``: the model card written by training (data, metrics, hyper-parameters, code version).

No torch here: the registry reads configs and cards without it.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.json"
CLASSES = ("normal", "pneumonia")


def default_config(arch: str = "resnet18", input_size: int = 224, threshold: float = 0.5) -> dict[str, Any]:
    """The ``config.json`` of a model artefact."""
    return {
        "arch": arch,
        "input_size": int(input_size),
        "threshold": float(threshold),
        "preprocessing": "shared.preprocessing",
        "classes": list(CLASSES),
        "in_channels": 1,
    }


def read_json_members(tar_gz: bytes, names: tuple[str, ...] = (CONFIG_FILE, CARD_FILE)) -> dict[str, dict[str, Any]]:
    """The JSON members among ``names`` at the top level of a ``model.tar.gz`` (absent ones are left out)."""
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_gz), mode="r:gz") as tf:
        for m in tf.getmembers():
            base = m.name.lstrip("./")
            if base in names and m.isfile():
                f = tf.extractfile(m)
                if f is not None:
                    out[base] = json.loads(f.read())
    return out
