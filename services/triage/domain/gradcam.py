"""Grad-CAM (Selvaraju et al., 2017) for the pneumonia logit, and the overlay PNG the radiologist sees.

The feature map is the deepest one produced by a top-level child of the network whose sides are at least
``min_size`` pixels: for a ResNet at 224 px that is ``layer4`` (7×7); at smaller inputs an earlier stage, because a
2×2 map cannot say where an opacity is.
"""

from __future__ import annotations

import threading

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Grad-CAM registers forward hooks on the shared model: two threads at once would each capture the other's
#: activations (and then find no gradient on them), so one map is computed at a time.
_CAM_LOCK = threading.Lock()


def grad_cam(module: nn.Module, x: np.ndarray, *, min_size: int = 7) -> tuple[np.ndarray, str]:
    """Grad-CAM of one preprocessed frame (S×S float32) -> (S×S map in [0, 1], the name of the layer used).

    Thread-safe: calls are serialised (see ``_CAM_LOCK``)."""
    with _CAM_LOCK:
        return _grad_cam(module, x, min_size=min_size)


def _grad_cam(module: nn.Module, x: np.ndarray, *, min_size: int) -> tuple[np.ndarray, str]:
    acts: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def hook(name: str):  # noqa: ANN202 - torch hook factory
        def f(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor) and out.ndim == 4:
                out.retain_grad()
                acts[name] = out
                order.append(name)

        return f

    handles = [child.register_forward_hook(hook(name)) for name, child in module.named_children()]
    try:
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None].requires_grad_(True)
        with torch.enable_grad():
            logit = module(inp).reshape(-1)[0]
            candidates = [n for n in order if min(acts[n].shape[-2:]) >= min_size] or order[-1:]
            if not candidates:
                raise ValueError("the model produced no 4-D feature map; Grad-CAM needs a convolutional network")
            layer = candidates[-1]
            logit.backward()
        a = acts[layer].detach()[0]
        g = acts[layer].grad
        if g is None:
            raise ValueError(f"no gradient reached layer {layer!r}")
        weights = g[0].mean(dim=(1, 2))
        cam = F.relu((weights[:, None, None] * a).sum(0))
        cam = F.interpolate(cam[None, None], size=x.shape, mode="bilinear", align_corners=False)[0, 0]
    finally:
        for h in handles:
            h.remove()
    cam_np = cam.numpy().astype(np.float32)
    peak = float(cam_np.max())
    return (cam_np / peak if peak > 0 else cam_np), layer


def resize_map(cam: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Bilinear resize of a heatmap to the frame's size (preprocessing maps the whole frame onto S×S)."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(rows, columns), mode="bilinear", align_corners=False)[0, 0].numpy()


def _jet(v: np.ndarray) -> np.ndarray:
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def overlay_png(cam: np.ndarray, rows: int, columns: int, *, max_alpha: float = 0.6) -> bytes:
    """An RGBA PNG the size of the frame: jet colours, opacity proportional to the map (viewers draw it on top)."""
    m = np.clip(resize_map(cam, rows, columns), 0.0, 1.0)
    rgba = np.empty((rows, columns, 4), dtype=np.uint8)
    rgba[..., :3] = np.round(_jet(m) * 255).astype(np.uint8)
    rgba[..., 3] = np.round(m * max_alpha * 255).astype(np.uint8)
    return bytes(imagecodecs.png_encode(rgba))
