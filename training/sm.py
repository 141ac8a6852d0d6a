"""The SageMaker container contract, overridable for local runs.

SageMaker mounts everything under ``/opt/ml``; the local executor and tests point ``RADLOOP_OPT_ML`` at a temporary
tree instead. Training jobs also read the ``SM_*`` variables (set by the SageMaker training toolkit, or by the local
executor) and ``/opt/ml/input/config/hyperparameters.json`` (set by SageMaker for any container).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

#: JsonGet paths into evaluation.json that the pipeline's condition and the local executor's outputs rely on
AUC_PATH = "binary_classification_metrics.auc.value"
CHAMPION_BAR_PATH = "gate.champion_bar"

#: regexes for SageMaker metric definitions: what train.py prints, what the pipeline's training step scrapes
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+)"},
    {"Name": "validation:loss", "Regex": r"val_loss=([0-9.eE+-]+)"},
    {"Name": "validation:auc", "Regex": r"val_auc=([0-9.eE+-]+)"},
    {"Name": "train:images_per_second", "Regex": r"images_per_s=([0-9.eE+-]+)"},
]


def opt_ml(*parts: str) -> Path:
    """``/opt/ml/<parts>``, or the same under ``$RADLOOP_OPT_ML`` when set."""
    return Path(os.environ.get("RADLOOP_OPT_ML", "/opt/ml"), *parts)


def channel_dir(name: str) -> Path:
    """The local directory of input channel ``name`` (``SM_CHANNEL_<NAME>`` or ``/opt/ml/input/data/<name>``)."""
    env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
    return Path(env) if env else opt_ml("input", "data", name)


def model_dir() -> Path:
    return Path(os.environ.get("SM_MODEL_DIR") or opt_ml("model"))


def checkpoint_dir() -> Path:
    return Path(os.environ.get("SM_CHECKPOINT_DIR") or opt_ml("checkpoints"))


def output_dir() -> Path:
    return Path(os.environ.get("SM_OUTPUT_DIR") or opt_ml("output"))


def hyperparameters() -> dict[str, Any]:
    """Hyper-parameters from ``SM_HPS`` (JSON) or ``/opt/ml/input/config/hyperparameters.json``; {} when neither."""
    env = os.environ.get("SM_HPS")
    if env:
        return dict(json.loads(env))
    p = opt_ml("input", "config", "hyperparameters.json")
    if p.is_file():
        return dict(json.loads(p.read_text()))
    return {}


def write_failure(reason: str) -> None:
    """Write ``/opt/ml/output/failure``: SageMaker shows its content as the job's FailureReason."""
    try:
        d = output_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / "failure").write_text(reason[:1024])
    except OSError:
        pass


def code_version() -> str:
    """The code version recorded in model cards: ``RADLOOP_CODE_VERSION``, else the git commit, else 'unknown'."""
    v = os.environ.get("RADLOOP_CODE_VERSION")
    if v:
        return v
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"
