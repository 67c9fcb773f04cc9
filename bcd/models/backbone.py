"""timm backbones with a small classification head, plus weight loading and freezing helpers."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_data_config
from torch import nn

from bcd.models.checkpoints import DATA_GLOBALS, safe_load
from bcd.models.specs import ModelConfig
from bcd.models.weight_formats import (
    WeightsFormatError,
    check_model,
    convert,
    is_efficientnet_pytorch,
    packaged_weights,
)

log = logging.getLogger("bcd.models.backbone")

HEADS = ("linear", "mlp")

# Wrapper prefixes added by Lightning (net.), DDP (module.), torch.compile (_orig_mod.) and some exporters (model.).
# Our own stripping, not timm's clean_state_dict: that removes only module. and _orig_mod., and a bcd Lightning
# checkpoint's keys start with net. (timm 1.0.31).
_WRAPPER_PREFIXES = ("net.", "module.", "model.", "_orig_mod.")
_CHECKPOINT_KEYS = ("state_dict", "model", "state_dict_ema")


class Network(nn.Module):
    """A timm backbone producing pooled features followed by a classification head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        # Remembered so that train() (which Lightning calls on the whole module every epoch) cannot silently
        # put a frozen backbone's BatchNorm layers back into training mode.
        self.backbone_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (N, num_outputs)."""
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> Network:
        """Set training mode, keeping a frozen backbone in eval mode."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    @property
    def model_name(self) -> str:
        """The timm architecture name of the backbone."""
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        return str(cfg.get("architecture") or type(self.backbone).__name__)


def _build_head(
    head: str, num_features: int, num_outputs: int, head_hidden: int, drop_rate: float
) -> nn.Module:
    if head == "linear":
        return nn.Sequential(nn.Dropout(drop_rate), nn.Linear(num_features, num_outputs))
    if head == "mlp":
        return nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(num_features, head_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(head_hidden, num_outputs),
        )
    raise ValueError(f"model.head={head!r} is not a known head; choose one of {', '.join(HEADS)}")


def _unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (
        f"model.name={name!r} is not a timm model.{hint} "
        f"List the available names with `python -c \"import timm; print(timm.list_models('efficientnet*'))\"`."
    )


def build_network(
    name: str,
    num_outputs: int,
    head: str = ModelConfig.head,
    head_hidden: int = ModelConfig.head_hidden,
    drop_rate: float = ModelConfig.drop_rate,
    drop_path_rate: float = ModelConfig.drop_path_rate,
    pretrained: bool = ModelConfig.pretrained,
    weights_path: str | None = ModelConfig.weights_path,
    weights: str | None = ModelConfig.weights,
) -> Network:
    """Create the timm backbone and head, loading hub or local weights when asked."""
    # Validate the cheap things first so a config typo fails before a large model is built.
    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is not a known head; choose one of {', '.join(HEADS)}")
    if num_outputs < 1:
        raise ValueError(
            f"num_outputs must be >= 1 (1 for task=binary, the class count otherwise), got {num_outputs}"
        )
    if head == "mlp" and head_hidden < 1:
        raise ValueError(f"model.head_hidden must be >= 1 for model.head=mlp, got {head_hidden}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"model.drop_rate must be in [0, 1), got {drop_rate}")
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path_rate}")
    if sum(map(bool, (pretrained, weights_path, weights))) > 1:
        raise ValueError(
            "model.pretrained=true, model.weights_path and model.weights: choose one: the hub's weights, a local file, "
            "or model.weights=imagenet (the ImageNet weights a pip package ships, offline)"
        )
    if weights not in (None, "imagenet"):
        raise ValueError(f"model.weights: {weights!r} is not one of [null, imagenet]")
    if not timm.is_model(name):
        raise ValueError(_unknown_model_message(name))

    # drop_rate is deliberately not passed to timm: with num_classes=0 timm would still apply its own dropout
    # before the (identity) classifier, doubling the head's dropout.
    kwargs: dict[str, Any] = {"num_classes": 0}
    if drop_path_rate > 0:
        # Only passed when used, because some timm architectures do not accept the argument at all.
        kwargs["drop_path_rate"] = drop_path_rate

    if pretrained:
        try:
            backbone = timm.create_model(name, pretrained=True, **kwargs)
        # Broad on purpose: hub/network failures surface from httpx, huggingface_hub, urllib and timm itself.
        except Exception as exc:
            raise RuntimeError(
                f"cannot download ImageNet weights for {name} ({type(exc).__name__}: {exc}); either connect to "
                f"the internet / HF hub, or download the weights file and pass model.weights_path=/path/to/file "
                f"(with model.pretrained=false), or set model.pretrained=false to train from random init"
            ) from exc
    else:
        try:
            backbone = timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as exc:
            raise ValueError(
                f"model.name={name} rejected the backbone options ({exc}); try model.drop_path_rate=0"
            ) from exc

    network = Network(backbone, _build_head(head, backbone.num_features, num_outputs, head_hidden, drop_rate))
    if weights == "imagenet":
        weights_path = str(packaged_weights(name))
    if weights_path:
        load_weights(network, weights_path)
    return network


@dataclass
class WeightsReport:
    """What load_weights did: number of tensors loaded, file keys skipped, network keys left untouched."""

    loaded: int
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _torch_load(path: Path) -> Any:
    """A weights file's contents: tensors, plain values and at most OmegaConf's data classes (Lightning
    checkpoints of other projects carry OmegaConf hyper-parameters), never code."""
    return safe_load(path, "model.weights_path", "a PyTorch weights file (state dict, timm .pth/.bin or checkpoint)",
                     allowed=DATA_GLOBALS)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise ValueError(f"model.weights_path: cannot read {path} as a safetensors file ({exc})") from exc

    obj = _torch_load(path)
    if isinstance(obj, dict):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"model.weights_path: {path} holds no state dict (expected a dict of tensors, possibly under "
            f"one of {', '.join(_CHECKPOINT_KEYS)})"
        )
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _network_key(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    if key.startswith(("backbone.", "head.")):
        return key
    return "backbone." + key


def load_weights(network: Network, path: str | Path) -> WeightsReport:
    """Load a timm/safetensors state dict or a bcd Lightning checkpoint into the network."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model.weights_path: {path} does not exist; check the path or unset model.weights_path"
        )
    if not path.is_file():
        raise ValueError(f"model.weights_path: {path} is not a file")

    source = _read_state_dict(path)
    if is_efficientnet_pytorch(source):
        return _load_efficientnet_pytorch(network, source, path)
    target = network.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    misshapen: list[str] = []
    for key, value in source.items():
        mapped = _network_key(key)
        if mapped in target and target[mapped].shape == value.shape and mapped not in to_load:
            to_load[mapped] = value
        else:
            skipped.append(key)
            if mapped.startswith("backbone.") and mapped in target and target[mapped].shape != value.shape:
                misshapen.append(f"{key} {tuple(value.shape)} (the model's {mapped} is {tuple(target[mapped].shape)})")
    n_backbone = sum(1 for k in target if k.startswith("backbone."))
    k_backbone = sum(1 for k in to_load if k.startswith("backbone."))
    # Fewer than half matching almost always means the wrong architecture; loading it would silently leave
    # a mostly random backbone.
    if k_backbone * 2 < n_backbone:
        raise ValueError(
            f"model.weights_path: {path} does not fit model {network.model_name}: only {k_backbone} of "
            f"{n_backbone} backbone tensors matched; check model=... matches the weights"
        )

    # a skipped head is expected (another number of classes); a skipped backbone tensor would stay random, unnamed
    if misshapen:
        listed = "\n  ".join(misshapen[:10]) + (f"\n  ... and {len(misshapen) - 10} more" if len(misshapen) > 10 else "")
        raise ValueError(
            f"model.weights_path: {path} has backbone tensors of another shape than model {network.model_name}'s, "
            f"which would stay randomly initialised:\n  {listed}\ncheck that model=... names the architecture the "
            "weights were trained as, or use a weights file of this model"
        )

    network.load_state_dict(to_load, strict=False)
    missing = [k for k in target if k not in to_load]
    log.info(
        "Loaded %d tensors from %s into %s (%d/%d backbone, %d skipped, %d missing)",
        len(to_load),
        path,
        network.model_name,
        k_backbone,
        n_backbone,
        len(skipped),
        len(missing),
    )
    return WeightsReport(loaded=len(to_load), skipped=skipped, missing=missing)


def _load_efficientnet_pytorch(network: Network, source: dict[str, torch.Tensor], path: Path) -> WeightsReport:
    """Weights in EfficientNet-PyTorch's naming, mapped onto the timm backbone (bcd.models.weight_formats)."""
    check_model(network.model_name, source, str(path))
    try:
        converted = convert(source, network.backbone, network.model_name)
    except WeightsFormatError as error:
        raise WeightsFormatError(f"model.weights_path: {path}: {error}") from None
    network.backbone.load_state_dict(converted, strict=False)  # num_classes=0: the file's classifier is not used
    log.info("Loaded %d tensors in EfficientNet-PyTorch's naming from %s into %s (its ImageNet classifier left out)",
             len(converted), path, network.model_name)
    return WeightsReport(loaded=len(converted), skipped=[k for k in source if k.startswith("_fc.")])


def set_backbone_frozen(network: Network, frozen: bool) -> None:
    """Freeze or unfreeze the backbone: requires_grad off and BatchNorm layers in eval mode while frozen.

    Not Lightning's BackboneFinetuning: it leaves the backbone out of the optimizer until it unfreezes it and then adds
    it as a new parameter group at a ramped learning rate, which is another recipe than the paper's (frozen base, then
    every layer at the configured lr) and changes the optimizer state a resumed run must restore. Every parameter is
    in the optimizer from the start here; a frozen one has no gradient, so the optimizer leaves it as it is."""
    network.backbone_frozen = frozen
    for param in network.backbone.parameters():
        param.requires_grad_(not frozen)
    # The whole backbone goes to eval, not only BatchNorm: drop-path would otherwise keep perturbing the
    # features of what is meant to be a fixed feature extractor.
    network.backbone.train(network.training and not frozen)


def backbone_data_config(network: Network) -> dict[str, Any]:
    """Input size, mean and std from the backbone's pretrained config (timm.data.resolve_data_config): the model's own
    preprocessing (bcd resizes whole images to the input size, so timm's crop and interpolation settings are unused)."""
    cfg = resolve_data_config({}, model=network.backbone)
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
    }


def native_img_size(name: str) -> int:
    """The input side length the named timm model was pretrained at (e.g. 380 for tf_efficientnet_b4)."""
    if not timm.is_model(name):
        raise ValueError(_unknown_model_message(name))
    # Read from the registry rather than building the model, so choosing an image size stays cheap.
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not cfg.input_size:
        return 224  # timm's own default when a model has no pretrained config
    return int(cfg.input_size[-1])


def input_size(model_cfg: Mapping[str, Any]) -> int:
    """The input side length of a model config: model.img_size, or the model's native size when it is null."""
    return int(model_cfg.get("img_size") or native_img_size(model_cfg["name"]))
