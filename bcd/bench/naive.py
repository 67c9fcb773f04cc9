"""`python -m bcd.bench.naive '<json>'`: the plain timm loop in a fresh process (bcd.bench starts it)."""

import json
import sys

import torch

from bcd.bench.training import plain_timm_training

if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    torch.set_num_threads(arguments.pop("threads"))
    print(json.dumps(plain_timm_training(**arguments)))
