"""The model contract: N×1 logits, a 1-channel stem, and a model directory / tarball that round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from training.model import build_model, default_config, load_model_dir, save_model_dir, write_model_tar


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_build_model_gives_one_logit_per_image(arch: str) -> None:
    m = build_model(arch).eval()
    assert m.conv1.in_channels == 1
    with torch.no_grad():
        out = m(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1)


def test_unknown_arch_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="vgg"):
        build_model("vgg")


def test_model_dir_and_tarball_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    m = build_model("resnet18").eval()
    save_model_dir(m, default_config("resnet18", 96, 0.37), tmp_path / "m")
    tar = write_model_tar(tmp_path / "m", tmp_path / "model.tar.gz")
    x = torch.rand(2, 1, 96, 96)
    for src in (tmp_path / "m", tar):
        m2, cfg = load_model_dir(src)
        assert not m2.training
        assert cfg["threshold"] == pytest.approx(0.37) and cfg["input_size"] == 96
        assert cfg["preprocessing"] == "shared.preprocessing" and cfg["classes"] == ["normal", "pneumonia"]
        with torch.no_grad():
            assert torch.equal(m(x), m2(x))
