"""The pneumonia classifier: a torchvision ResNet with a 1-channel stem and one logit per image.

Contract (docs/training.md, contracts_ml): ``build_model(arch, in_channels) -> nn.Module`` returning N×1 logits for an
N×1×S×S float32 input produced by :func:`shared.preprocessing.preprocess`; ``load_model_dir(path)`` loads the
``weights.pt`` + ``config.json`` pair that ``model.tar.gz`` holds.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torchvision import models

from shared.model_format import CARD_FILE, CLASSES, CONFIG_FILE, WEIGHTS_FILE, default_config

__all__ = ["ARCHS", "CARD_FILE", "CLASSES", "CONFIG_FILE", "WEIGHTS_FILE", "build_model", "default_config",
           "extract_model_tar", "load_model_dir", "save_model_dir"]

#: resnet10 is ResNet-18 with one basic block per stage (4.9 M parameters against 11.2 M): about twice as fast on a
#: CPU and as accurate on small cohorts, which is what the on-machine demo trains
ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50")


def build_model(arch: str = "resnet18", in_channels: int = 1, *, pretrained: bool = False) -> nn.Module:
    """A ResNet whose stem takes ``in_channels`` channels and whose head gives one logit (shape N×1).

    ``pretrained=True`` loads torchvision's ImageNet weights (only where they can be downloaded) and folds the RGB stem
    into a grey one by summing over the colour axis, which keeps the pretrained filters' response to grey images.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if arch == "resnet10":
        if pretrained:
            raise ValueError("resnet10 has no pretrained weights; use resnet18 or larger with pretrained=True")
        net: models.ResNet = models.resnet.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1])
    else:
        net = getattr(models, arch)(weights="DEFAULT" if pretrained else None)
    old = net.conv1
    stem = nn.Conv2d(in_channels, old.out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained:
        with torch.no_grad():
            w = old.weight.sum(dim=1, keepdim=True)
            stem.weight.copy_(w.repeat(1, in_channels, 1, 1) / in_channels)
    net.conv1 = stem
    net.fc = nn.Linear(net.fc.in_features, 1)
    return net


def save_model_dir(model: nn.Module, config: dict[str, Any], path: str | Path) -> Path:
    """Write ``weights.pt`` (state_dict, CPU tensors) and ``config.json`` into ``path``."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, p / WEIGHTS_FILE)
    (p / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return p


def load_model_dir(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load a model directory (or a ``model.tar.gz``) -> (module in eval mode, config dict)."""
    p = Path(path)
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp:
            extract_model_tar(p, tmp)
            return load_model_dir(tmp, map_location=map_location)
    cfg_path = p / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"model directory {p} has no {CONFIG_FILE}; expected weights.pt and config.json")
    config = json.loads(cfg_path.read_text())
    model = build_model(config.get("arch", "resnet18"), int(config.get("in_channels", 1)))
    state = torch.load(p / WEIGHTS_FILE, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, config


def extract_model_tar(tar_path: str | Path, dest: str | Path) -> Path:
    """Extract a model.tar.gz safely (regular files at the top level only, no links or absolute paths)."""
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tf:
        for m in tf.getmembers():
            name = Path(m.name)
            if m.isdir():
                continue
            if not m.isfile() or name.is_absolute() or ".." in name.parts:
                raise ValueError(f"model archive member {m.name!r} is not a plain relative file")
            f = tf.extractfile(m)
            assert f is not None
            (d / name.name).write_bytes(f.read())
    return d


def write_model_tar(model_dir: str | Path, tar_path: str | Path) -> Path:
    """Pack the files of ``model_dir`` (flat) into ``tar_path`` (gzip), sorted for stable archives."""
    src = Path(model_dir)
    out = Path(tar_path)
    with tarfile.open(out, "w:gz") as tf:
        for f in sorted(src.iterdir()):
            if f.is_file() and f.resolve() != out.resolve():
                tf.add(f, arcname=f.name)
    return out


@torch.no_grad()
def predict_proba(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Probabilities of pneumonia (shape N) for an N×1×S×S float32 batch, in fp32 for stable outputs."""
    model.eval()
    return torch.sigmoid(model(batch.float()).float().reshape(-1))


def forward_with_embedding(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate-layer embedding N×D, logits N×1) of a :func:`build_model` ResNet in one forward pass.

    The same steps as torchvision's ``ResNet._forward_impl``, stopping to keep the pooled features that ``fc`` reads:
    triage and training summarise them for drift (shared.drift) at no extra forward pass."""
    r = cast(models.ResNet, net)
    x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
    x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
    emb = torch.flatten(r.avgpool(x), 1)
    return emb, r.fc(emb)
