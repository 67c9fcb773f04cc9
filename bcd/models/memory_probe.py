"""`python -m bcd.models.memory_probe '<json>'`: one training step (or one inference batch) of a Classifier in a fresh
process, printing as JSON its peak memory since the model was built (`peak_bytes`) and whether that restart of the
peak was possible (`restarted`); bcd.models.memory starts it and reads the line."""

from __future__ import annotations

import gc
import json
import sys
from contextlib import nullcontext

import torch

from bcd.models import registry
from bcd.models.classifier import Classifier
from bcd.models.fitting import AUTOCAST_DTYPES
from bcd.models.memory import peak_memory, reset_peak_memory


def measure(request: dict) -> dict[str, int | bool]:
    """Run the step the request describes and return its peak bytes (the device's reserved memory on a GPU, the
    process's peak resident memory on the CPU), counted from the memory in use once the model is built, and whether
    that restart of the peak was possible (`restarted`: else the peak may be building the model's)."""
    device = torch.device(request["device"])
    model = Classifier(**request["hparams"], initial_weights=False).to(device)  # the initial weights weigh the same
    micro, size = request["micro"], request["img_size"]
    images = torch.randint(0, 256, (micro, 3, size, size), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 2 if model.binary else len(model.class_names), (micro,), device=device)
    dtype = AUTOCAST_DTYPES.get(request["precision"])
    cast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    optimizer = registry.build("optimizer", model.optimizer_config, model.parameters()) \
        if request["mode"] == "train" else None
    gc.collect()
    # building the model can peak higher than a small step (at inference, always): that peak must not hide the step's
    restarted = reset_peak_memory(request["device"])
    if optimizer is not None:
        model.train()
        for _ in range(2):  # the second step holds the optimizer's state as training does
            optimizer.zero_grad(set_to_none=True)
            with cast:
                loss = model.loss_fn(model(images), targets.float() if model.binary else targets)
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        with torch.inference_mode(), cast:
            model(images)
    return {"peak_bytes": peak_memory(request["device"]), "restarted": restarted}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
