"""The colorizer service, one subpackage per role.

- ``serving.runtime``: what the archive ships and TorchServe runs (torch, Pillow, numpy)
- ``serving.launcher``: `colorizer archive/serve/stop` and the TorchServe configuration
- ``serving.client``: ``ColorizerClient`` (REST, gRPC) and `colorizer colorize/bench`
- ``serving.cli``: the `colorizer` command line, loading each command's module when it runs
"""
