"""Numerical and error-path tests for bcd.models.losses against torch's reference implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bcd.models.losses import BinaryCrossEntropyLoss, CrossEntropyLoss, FocalLoss

N, C = 16, 4


@pytest.fixture
def multiclass() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, C, generator=g) * 3
    target = torch.randint(0, C, (N,), generator=g)
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0])
    return logits, target, weights


@pytest.fixture
def binary() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(N, 1, generator=g) * 3
    target = torch.randint(0, 2, (N,), generator=g)
    weights = torch.tensor([0.7, 3.0])
    return logits, target, weights


def _grad_is_finite(loss_fn: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> None:
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_torch(multiclass, weighted: bool, smoothing: float) -> None:
    logits, target, weights = multiclass
    loss = CrossEntropyLoss(weights, weighted=weighted, label_smoothing=smoothing)(logits, target)
    expected = F.cross_entropy(
        logits, target, weight=weights if weighted else None, label_smoothing=smoothing
    )
    torch.testing.assert_close(loss, expected)
    _grad_is_finite(CrossEntropyLoss(weights, weighted=weighted, label_smoothing=smoothing), logits, target)


def test_class_weights_only_used_when_weighted(multiclass) -> None:
    logits, target, weights = multiclass
    torch.testing.assert_close(CrossEntropyLoss(weights)(logits, target), F.cross_entropy(logits, target))


def test_class_weights_are_a_non_persistent_buffer(multiclass) -> None:
    _, _, weights = multiclass
    loss = CrossEntropyLoss(weights, weighted=True)
    assert "class_weights" in dict(loss.named_buffers())
    assert "class_weights" not in loss.state_dict()
    assert loss.to(torch.float64).class_weights.dtype == torch.float64  # follows .to() like any buffer


@pytest.mark.parametrize("cls", [CrossEntropyLoss, FocalLoss, BinaryCrossEntropyLoss])
def test_weighted_without_weights(cls) -> None:
    with pytest.raises(ValueError, match=r"loss\.weighted"):
        cls(None, weighted=True)


def test_cross_entropy_rejects_binary_logits(binary) -> None:
    logits, target, _ = binary
    with pytest.raises(ValueError, match="loss=ce needs task=multiclass; use loss=bce"):
        CrossEntropyLoss()(logits, target)
    with pytest.raises(ValueError, match="loss=ce needs task=multiclass"):
        CrossEntropyLoss()(logits[:, 0], target)


def test_weight_count_must_match_classes(multiclass) -> None:
    logits, target, _ = multiclass
    with pytest.raises(ValueError, match="3 class weights for 4 classes"):
        CrossEntropyLoss(torch.ones(3), weighted=True)(logits, target)


def test_label_smoothing_range() -> None:
    with pytest.raises(ValueError, match=r"loss\.label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)


@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma_zero_is_cross_entropy(multiclass, weighted: bool) -> None:
    logits, target, weights = multiclass
    loss = FocalLoss(weights, weighted=weighted, gamma=0.0)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, weight=weights if weighted else None))


@pytest.mark.parametrize("shape", ["n1", "n"])
def test_focal_gamma_zero_is_bce(binary, shape: str) -> None:
    logits, target, _ = binary
    logits = logits if shape == "n1" else logits[:, 0]
    loss = FocalLoss(gamma=0.0)(logits, target)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits.reshape(-1), target.float()))


def test_focal_multiclass_reference(multiclass) -> None:
    logits, target, weights = multiclass
    gamma = 2.0
    p_t = logits.softmax(1).gather(1, target[:, None])[:, 0]
    per_sample = -((1 - p_t) ** gamma) * p_t.log()
    torch.testing.assert_close(FocalLoss(gamma=gamma)(logits, target), per_sample.mean())
    alpha = weights[target]
    torch.testing.assert_close(
        FocalLoss(weights, weighted=True, gamma=gamma)(logits, target),
        (alpha * per_sample).sum() / alpha.sum(),
    )


def test_focal_binary_reference(binary) -> None:
    logits, target, weights = binary
    p = logits[:, 0].sigmoid()
    t = target.float()
    p_t = p * t + (1 - p) * (1 - t)
    per_sample = -((1 - p_t) ** 2) * p_t.log()
    torch.testing.assert_close(FocalLoss(gamma=2.0)(logits, target), per_sample.mean())
    alpha = torch.where(target == 1, weights[1], weights[0])
    torch.testing.assert_close(
        FocalLoss(weights, weighted=True)(logits, target), (alpha * per_sample).sum() / alpha.sum()
    )


def test_focal_down_weights_easy_examples(multiclass) -> None:
    logits, target, _ = multiclass
    assert FocalLoss(gamma=2.0)(logits, target) < FocalLoss(gamma=0.0)(logits, target)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_gradients_finite_even_when_confident(gamma: float) -> None:
    # p_t rounds to exactly 1 here, where (1 - p_t) ** gamma has an infinite slope for gamma < 1.
    logits = torch.tensor([[60.0, -60.0], [-60.0, 60.0], [0.3, -0.2]])
    _grad_is_finite(FocalLoss(gamma=gamma), logits, torch.tensor([0, 1, 1]))
    _grad_is_finite(FocalLoss(gamma=gamma), logits[:, :1], torch.tensor([1, 0, 1]))


def test_focal_rejects_negative_gamma() -> None:
    with pytest.raises(ValueError, match=r"loss\.gamma"):
        FocalLoss(gamma=-1.0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("float_target", [False, True])
def test_bce_matches_torch(binary, weighted: bool, float_target: bool) -> None:
    logits, target, weights = binary
    tgt = target.float() if float_target else target
    loss = BinaryCrossEntropyLoss(weights, weighted=weighted)(logits, tgt)
    pos_weight = weights[1] / weights[0] if weighted else None
    expected = F.binary_cross_entropy_with_logits(logits, target.float()[:, None], pos_weight=pos_weight)
    torch.testing.assert_close(loss, expected)
    _grad_is_finite(BinaryCrossEntropyLoss(weights, weighted=weighted), logits, tgt)
    torch.testing.assert_close(
        BinaryCrossEntropyLoss(weights, weighted=weighted)(logits[:, 0], tgt), expected
    )


def test_bce_rejects_multiclass_logits(multiclass) -> None:
    logits, target, _ = multiclass
    with pytest.raises(ValueError, match=r"loss=bce needs task=binary \(one output\)"):
        BinaryCrossEntropyLoss()(logits, target)


def test_bce_needs_two_weights() -> None:
    with pytest.raises(ValueError, match="2 class weights"):
        BinaryCrossEntropyLoss(torch.ones(4), weighted=True)


def test_half_precision_logits(multiclass, binary) -> None:
    logits, target, weights = multiclass
    out = FocalLoss(weights, weighted=True)(logits.to(torch.bfloat16), target)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    blogits, btarget, bweights = binary
    out = BinaryCrossEntropyLoss(bweights, weighted=True)(blogits.half(), btarget)
    assert torch.isfinite(out)
