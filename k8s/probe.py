"""Readiness of the pod's TorchServe: exit 0 when the model has a worker that has loaded it.

Run inside the container by the startup and readiness probes (and the image's
HEALTHCHECK): ``python -I probe.py``. TorchServe 0.12 answers ``/ping`` with 200
"Healthy" as soon as a worker process has started, while the model is still loading, so
``/ping`` cannot tell "loading" from "ready". The management API's model description
can: each worker is "UNLOADING" until its model is loaded, then "READY". The management
API listens on loopback only, which an exec probe reaches and nothing outside the pod
does. Its address comes from the same config.properties TorchServe reads.

With ``--live`` it asks instead whether the frontend answers at all: its metrics
endpoint (``metrics_address``, loopback), which the JVM serves whatever its workers'
state. That is the liveness probe: TorchServe listens on loopback only, behind the
pod's front containers, where a kubelet httpGet cannot reach it.

Standard library only: it starts every few seconds and must stay cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

DEFAULT_CONFIG = "serving/config.properties"  # relative to the image's WORKDIR
DEFAULT_MODEL = "colorizer"


def config_url(config_path: str, key: str = "management_address") -> str:
    """An address (``management_address``, ``metrics_address``) of a TorchServe
    config.properties."""
    with open(config_path, encoding="utf-8") as f:
        for line in f:
            name, sep, value = line.strip().partition("=")
            if sep and name.strip() == key:
                return value.strip().rstrip("/")
    raise KeyError(f"no {key} in {config_path}")


def frontend_answers(url: str, timeout: float) -> bool:
    """Whether TorchServe's metrics endpoint at ``url`` answers 200."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as resp:
        return resp.status == 200


def ready_workers(url: str, model: str, timeout: float) -> int:
    """Number of the model's workers in state READY."""
    with urllib.request.urlopen(f"{url}/models/{model}", timeout=timeout) as resp:
        versions = json.load(resp)
    return sum(w.get("status") == "READY" for v in versions for w in v.get("workers", []))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help="TorchServe config.properties")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds for the HTTP call")
    p.add_argument("--live", action="store_true", help="only: does the frontend answer at all")
    args = p.parse_args(argv)
    if args.live:
        try:
            alive = frontend_answers(config_url(args.config, "metrics_address"), args.timeout)
        except Exception as exc:  # any failure means "not alive"
            print(f"not alive: {exc}", file=sys.stderr)
            return 1
        return 0 if alive else 1
    try:
        n = ready_workers(config_url(args.config), args.model, args.timeout)
    except Exception as exc:  # any failure means "not ready"
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if n == 0:
        print(f"not ready: no READY worker for {args.model}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
