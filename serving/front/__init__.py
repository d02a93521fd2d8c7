"""What stands before TorchServe: nginx for REST and metrics (``nginx.conf``, ``nginx.py``)
and the gRPC front (``grpc_front.py``). The pod and `colorizer serve` run these files."""
