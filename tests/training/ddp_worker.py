"""Run by tests/training/test_train.py under torchrun: a few steps; dump this rank's weights."""

import sys
from pathlib import Path

import torch

from tests.support.models import quick_train_config
from training.train import train

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = train(quick_train_config(data, out, epochs=1))
    torch.save(result.model.state_dict(), out / f"rank{result.rank}.pt")
