"""nginx.conf beside this file, for one run: its ports and bind address, and the command.

The file names the pod's ports (``serving.runtime.constants``). The pod runs it as it is;
`colorizer serve` runs a copy in which each of those ports is replaced by the run's, and
each ``listen`` binds to the run's host. Nothing else in the file changes, so the limits,
timeouts and refusals are the same in both places.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent / "nginx.conf"
INSTALL_HINT = "install Debian's nginx (apt-get install nginx-light; `make serve` does it)"

_LISTEN = re.compile(r"^(\s*listen\s+)(?:([\w.\[\]:]+):)?(\d+)\b", re.MULTILINE)
_UPSTREAM = re.compile(r"^(\s*server\s+127\.0\.0\.1:)(\d+)\b", re.MULTILINE)


class FrontConfigError(ValueError):
    """nginx.conf names a port the run does not map (the file and the code disagree)."""


def render(text: str, host: str, ports: dict[int, int]) -> str:
    """``text`` (nginx.conf) with every listen and upstream port mapped through ``ports``
    (pod port -> run port), and every listen without an address of its own (the callers'
    ports; not the loopback status port) bound to ``host``."""

    def port(pod_port: str) -> str:
        if int(pod_port) not in ports:
            raise FrontConfigError(f"nginx.conf names port {pod_port}, which the run does not map")
        return str(ports[int(pod_port)])

    text = _LISTEN.sub(lambda m: f"{m[1]}{m[2] or host}:{port(m[3])}", text)
    return _UPSTREAM.sub(lambda m: f"{m[1]}{port(m[2])}", text)


def listen_ports(text: str) -> list[int]:
    """The ports nginx.conf listens on, in file order."""
    return [int(m[3]) for m in _LISTEN.finditer(text)]


def upstream_ports(text: str) -> list[int]:
    """The loopback ports nginx.conf passes requests to, in file order."""
    return [int(m[2]) for m in _UPSTREAM.finditer(text)]


def find_nginx() -> str | None:
    """Path of the nginx binary (PATH, then /usr/sbin where Debian puts it), or None."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def command(nginx: str, prefix: Path, conf: Path) -> list[str]:
    """How `colorizer serve` starts nginx, as the pod does: in the foreground (the file
    says ``daemon off``), every relative path under ``prefix``, errors to stderr.

    Started by root (a developer's machine, CI), nginx would run its worker as ``nobody``,
    who cannot write the run's folder; the worker then runs as the user who started it,
    as it does in the pod (uid 10001, where nginx cannot switch users).
    """
    as_user = ["-g", "user root root;"] if os.geteuid() == 0 else []
    return [nginx, "-p", f"{prefix}/", "-c", str(conf), "-e", "stderr", *as_user]
