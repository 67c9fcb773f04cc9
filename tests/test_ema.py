"""The moving average of the weights (ema_epochs): its arithmetic, and a run that validates, saves and tests it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bcd.utils.ema import EMAWeights
from bcd.utils.errors import ConfigError


class Line(L.LightningModule):
    """A one-layer regression that records its weights after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.seen.append(self.layer.weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_average_follows_the_weights_with_the_decay_of_its_horizon(tmp_path) -> None:
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(40, 3), torch.randn(40, 1)), batch_size=10)  # 4 steps per epoch
    model, ema = Line(), EMAWeights(epochs=0.5)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", callbacks=[ema], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert ema.decay == pytest.approx(1 - 1 / 2)  # half an epoch = 2 steps, reached after 8 updates
    expected = model.seen[0]  # the first update copies the weights
    for updates, weights in enumerate(model.seen[1:], start=1):
        decay = min(ema.decay, (1 + updates) / (10 + updates))
        expected = decay * expected + (1 - decay) * weights
    # at the end of training Lightning leaves the average in the model
    torch.testing.assert_close(model.layer.weight.detach(), expected)
    assert not torch.allclose(expected, model.seen[-1])


def test_the_horizon_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ema_epochs"):
        EMAWeights(epochs=0)


def test_a_run_validates_saves_and_tests_the_average(train_run) -> None:
    summary = train_run("trainer.max_epochs=2", "ema_epochs=1")
    last = torch.load(summary.checkpoints.last, map_location="cpu", weights_only=True)
    average, current = last["state_dict"], last["current_model_state"]
    differ = [k for k, v in average.items() if v.is_floating_point() and not torch.equal(v, current[k])]
    assert differ, "the checkpoint's state_dict should hold the averaged weights, not the raw ones"
    assert summary.metrics.test["test/loss"] > 0
    with pytest.raises(ConfigError, match="ema_epochs"):
        train_run("ema_epochs=0")
