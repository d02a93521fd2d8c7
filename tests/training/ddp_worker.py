"""Run by tests/training/test_train.py under torchrun: train a few steps, dump this rank's weights."""

import sys
from pathlib import Path

import torch

from training.train import TrainConfig, train

if __name__ == "__main__":
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = train(
        TrainConfig(
            data=data,
            out=out,
            val_fraction=0.25,
            epochs=1,
            batch_size=2,
            workers=0,
            precision="fp32",
            max_steps_per_epoch=2,
            progress=False,
        )
    )
    torch.save(result.model.state_dict(), out / f"rank{result.rank}.pt")
