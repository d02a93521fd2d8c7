"""Stop a pod's process only once no request is in flight through the front.

    python -I drain.py [--group] [--stop-signal TERM|QUIT] [--status-url URL] -- COMMAND...

Runs COMMAND and, when the container gets SIGTERM, holds it back until nginx's status page
(``stub_status``, served on loopback by serving/front/nginx.conf) shows no request but its
own, at most ``--max-wait`` seconds; then sends ``--stop-signal`` to COMMAND (to its whole
process group with ``--group``) and exits 0 when COMMAND stopped as asked.

Why: TorchServe 0.12, on SIGTERM, resets every REST call it has not answered yet, and
nginx on SIGTERM drops the connections it holds. The kubelet sends SIGTERM to every
container of the pod at the end of its preStop sleep, whatever is still in flight. With
this in front of both, the calls in flight are answered first: TorchServe's container
(``--group``: the torchserve launcher does not pass signals on, so the JVM and workers get
it directly) and nginx's (``--stop-signal QUIT``: its graceful stop). gRPC calls need no
wait here: TorchServe lets those in flight finish on SIGTERM.

Standard library only, like probe.py beside it.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

DEFAULT_STATUS_URL = "http://127.0.0.1:8083/status"
POLL_S = 0.2


def in_flight(status_text: str) -> int:
    """Requests nginx is reading or answering, less the status request itself."""
    match = re.search(r"Reading:\s*(\d+)\s+Writing:\s*(\d+)", status_text)
    if match is None:
        raise ValueError(f"not an nginx stub_status page: {status_text[:80]!r}")
    return max(0, int(match[1]) + int(match[2]) - 1)


def front_in_flight(url: str, timeout: float = 2.0) -> int:
    """Requests in flight through the front at ``url``; 0 when the front is gone (then
    nothing can be in flight through it)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return in_flight(resp.read().decode("ascii", "replace"))
    except OSError:
        return 0


def wait_idle(url: str, max_wait: float) -> float:
    """Block until the front has nothing in flight or ``max_wait`` passed; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait and front_in_flight(url) > 0:
        time.sleep(POLL_S)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--status-url", default=DEFAULT_STATUS_URL, help="nginx stub_status")
    p.add_argument("--stop-signal", default="TERM", choices=["TERM", "QUIT", "INT"])
    p.add_argument("--group", action="store_true", help="signal COMMAND's whole process group")
    p.add_argument("--max-wait", type=float, default=30.0, help="seconds to hold SIGTERM back")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("no COMMAND given")
    stop_signal = signal.Signals[f"SIG{args.stop_signal}"]
    asked = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    child = subprocess.Popen(command, start_new_session=args.group)
    while child.poll() is None and not asked:
        time.sleep(POLL_S)
    if child.poll() is None:
        waited = wait_idle(args.status_url, args.max_wait)
        print(f"drain: {waited:.1f} s until nothing was in flight; stopping {command[0]}",
              file=sys.stderr, flush=True)  # fmt: skip
        if args.group:
            os.killpg(child.pid, stop_signal)
        else:
            child.send_signal(stop_signal)
    code = child.wait()
    stopped_as_asked = bool(asked) and code in (-stop_signal, 128 + stop_signal)
    return 0 if stopped_as_asked else code


if __name__ == "__main__":
    sys.exit(main())
