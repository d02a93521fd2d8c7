"""What the .mar ships and TorchServe runs: color math, image I/O, the pipeline, typed errors.

Depends on torch, Pillow and numpy only, and imports nothing from the launcher, the
client or ``training`` (a test inspects ``sys.modules`` to keep it so). Import the
modules themselves; this file imports nothing, so the client can use ``constants``,
``errors`` and ``request_meta`` without loading torch.
"""
