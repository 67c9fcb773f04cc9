"""Tests for bcd.models.backbone using timm's tiny test_efficientnet (no downloads, CPU only)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from bcd.models.backbone import (
    Network,
    WeightsReport,
    backbone_data_config,
    build_network,
    load_weights,
    native_img_size,
    set_backbone_frozen,
)

NAME = "test_efficientnet"


def _x(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size)


def _reinit(network: Network) -> None:
    """Scramble every tensor so a successful load is distinguishable from the random init."""
    with torch.no_grad():
        for t in network.state_dict().values():
            if t.is_floating_point():
                t.uniform_(-3, 3)


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("num_outputs", [1, 4])
def test_build_network_output_shapes(head: str, num_outputs: int) -> None:
    net = build_network(NAME, num_outputs=num_outputs, head=head, head_hidden=16, drop_rate=0.2)
    assert isinstance(net, Network)
    assert isinstance(net.backbone, nn.Module) and isinstance(net.head, nn.Module)
    net.eval()
    features = net.backbone(_x(3, 48))
    assert features.shape == (3, net.backbone.num_features)
    assert net(_x(3, 48)).shape == (3, num_outputs)
    linears = [m for m in net.head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == (1 if head == "linear" else 2)
    if head == "mlp":
        assert linears[0].out_features == 16
        assert any(isinstance(m, nn.ReLU) for m in net.head.modules())


def test_drop_rate_is_applied_once_in_the_head() -> None:
    net = build_network(NAME, num_outputs=2, drop_rate=0.5)
    assert net.backbone.drop_rate == 0.0
    assert isinstance(net.head[0], nn.Dropout) and net.head[0].p == 0.5


def test_drop_path_rate_reaches_timm() -> None:
    net = build_network(NAME, num_outputs=2, drop_path_rate=0.1)
    rates = [m.drop_prob for m in net.backbone.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) > 0


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match=r"model\.name.*timm\.list_models") as info:
        build_network("efficentnet_b0", num_outputs=2)
    assert "efficientnet_b0" in str(info.value)  # close-match suggestion


def test_unknown_head() -> None:
    with pytest.raises(ValueError, match=r"model\.head"):
        build_network(NAME, num_outputs=2, head="transformer")


def test_pretrained_and_weights_path_conflict(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose one"):
        build_network(NAME, num_outputs=2, pretrained=True, weights_path=str(tmp_path / "w.pth"))


def test_pretrained_offline_gives_actionable_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants as hf_constants

    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch the constant as well as the env;
    # an empty cache dir makes the test independent of weights already cached on the machine.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"model\.weights_path") as info:
        build_network(NAME, num_outputs=2, pretrained=True)
    message = str(info.value)
    assert "cannot download ImageNet weights for test_efficientnet" in message
    assert "model.pretrained=false" in message
    assert info.value.__cause__ is not None


def test_pretrained_download_failure_is_chained(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> nn.Module:
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", fail)
    with pytest.raises(RuntimeError, match=r"model\.weights_path") as info:
        build_network(NAME, num_outputs=2, pretrained=True)
    assert isinstance(info.value.__cause__, OSError)


def test_build_network_with_weights_path(tmp_path: Path) -> None:
    path = tmp_path / "timm.pth"
    reference = timm.create_model(NAME, num_classes=1000)
    torch.save(reference.state_dict(), path)
    net = build_network(NAME, num_outputs=2, weights_path=str(path))
    torch.testing.assert_close(net.backbone.conv_stem.weight, reference.conv_stem.weight)


def _assert_backbone_equals(net: Network, state: dict[str, torch.Tensor]) -> None:
    for key, value in net.backbone.state_dict().items():
        torch.testing.assert_close(value, state[key], msg=f"backbone tensor {key} differs")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_plain_timm_state_dict(tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture) -> None:
    state = timm.create_model(NAME, num_classes=1000).state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)

    net = build_network(NAME, num_outputs=3)
    _reinit(net)
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="bcd.models.backbone"):
        report = load_weights(net, path)

    assert isinstance(report, WeightsReport)
    _assert_backbone_equals(net, state)
    # timm's 1000-class classifier has no counterpart in a num_classes=0 backbone, so it is skipped.
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    assert sorted(report.missing) == sorted("head." + k for k in head_before)
    assert report.loaded == len(net.backbone.state_dict())
    for key, value in net.head.state_dict().items():
        torch.testing.assert_close(value, head_before[key])
    assert any("Loaded" in r.message for r in caplog.records)


def test_load_lightning_checkpoint_restores_whole_network(tmp_path: Path) -> None:
    source = build_network(NAME, num_outputs=4, head="mlp", head_hidden=8)
    path = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 3,
            "state_dict": {"net." + k: v for k, v in source.state_dict().items()},
            "optimizer_states": [],
        },
        path,
    )
    net = build_network(NAME, num_outputs=4, head="mlp", head_hidden=8)
    _reinit(net)
    report = load_weights(net, path)
    assert report.skipped == [] and report.missing == []
    for key, value in source.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)


def test_load_lightning_checkpoint_with_omegaconf_hparams(tmp_path: Path) -> None:
    # Lightning's save_hyperparameters() stores Hydra's DictConfig, which weights_only=True refuses by default.
    source = build_network(NAME, num_outputs=2)
    path = tmp_path / "hparams.ckpt"
    cfg = OmegaConf.create(
        {"model": {"name": NAME, "head": "linear"}, "lr": 1e-3, "tags": ["a", {"b": None}]}
    )
    torch.save(
        {"state_dict": {"net." + k: v for k, v in source.state_dict().items()}, "hyper_parameters": cfg}, path
    )
    net = build_network(NAME, num_outputs=2)
    _reinit(net)
    report = load_weights(net, path)
    assert report.missing == []
    torch.testing.assert_close(net.head[1].weight, source.head[1].weight)


def test_load_ddp_and_model_prefixes(tmp_path: Path) -> None:
    state = timm.create_model(NAME, num_classes=0).state_dict()
    path = tmp_path / "ema.pth"
    torch.save({"state_dict_ema": {"module." + k: v for k, v in state.items()}}, path)
    net = build_network(NAME, num_outputs=2)
    _reinit(net)
    load_weights(net, path)
    _assert_backbone_equals(net, state)


def test_wrong_architecture_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    net = build_network(NAME, num_outputs=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.weights_path.*does not fit model test_efficientnet"):
        load_weights(net, path)
    for key, value in net.state_dict().items():  # nothing half-loaded
        torch.testing.assert_close(value, before[key])


def test_missing_file(tmp_path: Path) -> None:
    net = build_network(NAME, num_outputs=2)
    with pytest.raises(FileNotFoundError, match=r"model\.weights_path"):
        load_weights(net, tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".ckpt"])
def test_garbage_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(b"\x00not a weights file\xff" * 10)
    net = build_network(NAME, num_outputs=2)
    with pytest.raises(ValueError, match=str(path.name)):
        load_weights(net, path)


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "path": Path("/tmp")}, path)
    net = build_network(NAME, num_outputs=2)
    with pytest.raises(ValueError, match="pathlib.PosixPath, which bcd never loads"):
        load_weights(net, path)


def test_frozen_backbone_stays_in_eval_and_unchanged() -> None:
    torch.manual_seed(0)
    net = build_network(NAME, num_outputs=2, drop_path_rate=0.1)
    set_backbone_frozen(net, True)
    net.train()  # what Lightning does at the start of every training epoch
    assert net.training and net.head.training
    bns = [m for m in net.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for p in net.backbone.parameters())

    backbone_before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in net.head.state_dict().items()}
    # The optimizer deliberately gets every parameter, with momentum and weight decay, as a sloppy setup would.
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(_x(4)), torch.tensor([0, 1, 0, 1]))
        loss.backward()
        optimizer.step()

    for key, value in net.backbone.state_dict().items():  # parameters and BN running stats
        torch.testing.assert_close(value, backbone_before[key], msg=f"frozen backbone tensor {key} changed")
    assert any(not torch.equal(v, head_before[k]) for k, v in net.head.state_dict().items())

    set_backbone_frozen(net, False)
    assert all(m.training for m in bns)
    assert all(p.requires_grad for p in net.backbone.parameters())
    net.eval()
    assert not any(m.training for m in net.modules())


def test_unfreeze_while_in_eval_keeps_eval() -> None:
    net = build_network(NAME, num_outputs=2)
    set_backbone_frozen(net, True)
    net.eval()
    set_backbone_frozen(net, False)
    assert not net.backbone.training


def test_backbone_data_config() -> None:
    cfg = backbone_data_config(build_network(NAME, num_outputs=2))
    assert cfg["input_size"][0] == 3 and cfg["input_size"][1] == cfg["input_size"][2] > 0
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3
    assert all(0 < m < 1 for m in cfg["mean"]) and all(0 < s < 1 for s in cfg["std"])
    assert set(cfg) == {"input_size", "mean", "std"}  # what the model reads of it, and nothing unused


def test_native_img_size() -> None:
    assert native_img_size(NAME) == 160
    assert native_img_size("tf_efficientnet_b4") == 380
    with pytest.raises(ValueError, match=r"model\.name"):
        native_img_size("not_a_model")
