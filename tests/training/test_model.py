"""The model contract: N×1 logits, a 1-channel stem, and a model directory / tarball that round-trips exactly."""

from __future__ import annotations

import pytest
import torch

from training.model import (
    build_model,
    default_config,
    forward_with_embedding,
    load_model_dir,
    save_model_dir,
    write_model_tar,
)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_build_model_gives_one_logit_per_image(arch: str) -> None:
    m = build_model(arch).eval()
    assert m.conv1.in_channels == 1
    with torch.no_grad():
        out = m(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1)


@pytest.mark.parametrize(("arch", "dim"), [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_forward_with_embedding_gives_the_models_own_logits(arch: str, dim: int) -> None:
    """The drift embedding comes out of the scoring pass itself: the logits are exactly the module's."""
    m = build_model(arch).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        emb, logits = forward_with_embedding(m, x)
        assert torch.allclose(logits, m(x), atol=1e-6)
    assert emb.shape == (3, dim)


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
