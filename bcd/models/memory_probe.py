"""`python -m bcd.models.memory_probe '<json>'`: one training step (or one inference batch) of a Classifier in a fresh
process, printing the process's peak memory as JSON (bcd.models.memory starts it and reads the line)."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

import torch

from bcd.models import registry
from bcd.models.classifier import Classifier
from bcd.models.memory import peak_memory

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def measure(request: dict) -> int:
    """Run the step the request describes and return the peak bytes (the device's reserved memory on a GPU, the
    process's peak resident memory on the CPU)."""
    device = torch.device(request["device"])
    model = Classifier(**request["hparams"], initial_weights=False).to(device)  # the initial weights weigh the same
    micro, size = request["micro"], request["img_size"]
    images = torch.randint(0, 256, (micro, 3, size, size), dtype=torch.uint8, device=device)
    targets = torch.randint(0, 2 if model.binary else len(model.class_names), (micro,), device=device)
    dtype = AUTOCAST.get(request["precision"])
    cast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    if request["mode"] == "train":
        model.train()
        optimizer = registry.build("optimizer", model.optimizer_config, model.parameters())
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
    return peak_memory(request["device"])


if __name__ == "__main__":
    print(json.dumps({"peak_bytes": measure(json.loads(sys.argv[1]))}))
