"""`python k8s/image.py {ensure-engine|base|build|tidy|stop-engine}`: build the serving image.

Standard library only, so it runs with any Python 3.10+ (``make image`` runs
``python3 k8s/image.py build``).

``ensure-engine``
    Makes a Docker engine answer: installs Debian's ``docker.io`` when there is no
    engine at all, and starts ``dockerd --bridge=none --iptables=false`` when none is
    running (no bridge and no NAT rules: a container never gets an address of its own;
    builds and runs use ``--network host``). A daemon it starts is recorded in
    ``/run/colorizer-image/dockerd.json``; it prints ``started dockerd pid N`` or
    ``engine already running``.
``base``
    Makes the base image (``--base``, default the official python:3.11-slim-bookworm)
    present: already there, or pulled, or, where that default cannot be pulled (no
    registry reachable), a stand-in built from Debian bookworm's own Python 3.11 with
    mmdebstrap and tagged ``colorizer-base:python3.11-bookworm-standin``, never under the
    official name. One printed line says when the stand-in is used.
``build``
    ``ensure-engine``, ``base``, then a BuildKit build of k8s/Dockerfile (context: the
    repository root) tagged ``colorizer:<version of pyproject.toml>``, the name and tag
    k8s/base/kustomization.yaml deploys. pip's CA bundle, when one is configured
    (``PIP_CERT``, else ``pip config get global.cert``), is passed as the optional
    BuildKit secret ``ca``: needed behind a TLS-intercepting proxy, never stored in a layer.
    After a build, ``tidy`` removes what it superseded (below).
    ``--torch-variant cpu`` builds the CPU-only variant (the Dockerfile's TORCH_VARIANT),
    tagged ``colorizer:<version>-cpu``: torch from a ``+cpu`` wheel in k8s/wheelhouse/
    (``--wheelhouse DIR`` copies one there first), no CUDA wheels, no torchvision.
``tidy``
    Bounds the disk the builds take; ``build`` runs it after every build. Every build of
    a changed tree leaves the previous image untagged (GBs each): the untagged images
    labelled ``org.opencontainers.image.title=colorizer`` are removed, and no other. On
    an engine this helper started, BuildKit's cache is also trimmed, least recently used
    first, to ``--keep-cache-gb`` (default BUILD_CACHE_KEEP_GB; a build of the default
    variant needs about 6 GB of it to stay warm). On someone else's engine the cache is
    left alone, and the line printed says how large it is.
``stop-engine``
    Stops the dockerd this helper recorded as started, and nothing else: a daemon
    someone else started is left alone. ``--pid N`` stops it only if it is that pid.

A test fixture does the same in Python: ``started = ensure_engine()`` ... and at the end
``if started: stop_engine()``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "k8s" / "Dockerfile"
IMAGE_NAME = "colorizer"  # k8s/base/kustomization.yaml `images: - name: colorizer`
DEFAULT_BASE = "python:3.11-slim-bookworm"  # = the Dockerfile's ARG BASE_IMAGE default
STANDIN_BASE = "colorizer-base:python3.11-bookworm-standin"
# What the stand-in holds: bookworm's Python 3.11 (the official image's minor version),
# venv support, `python` on PATH, CA certificates. About 220 MB.
STANDIN_PACKAGES = ("python3.11", "python3.11-venv", "python-is-python3", "ca-certificates")
DOCKERD_ARGS = ("--bridge=none", "--iptables=false")
STATE_DIR = Path(os.environ.get("COLORIZER_IMAGE_STATE", "/run/colorizer-image"))
STATE = STATE_DIR / "dockerd.json"
DOCKERD_LOG = Path("/var/log/colorizer-dockerd.log")
ENGINE_WAIT_S = 90
WHEELHOUSE = REPO / "k8s" / "wheelhouse"  # the runtime-cpu stage's bind mount (git-ignored)
VARIANTS = ("cuda", "cpu")  # the Dockerfile's TORCH_VARIANT
TITLE_LABEL = f"org.opencontainers.image.title={IMAGE_NAME}"  # on every image built here
# BuildKit's cache kept after a build on an engine this helper started. A warm build of
# the default variant uses about 6 GB (pip's cache mount and the venv layers); unbounded,
# a day of rebuilds filled a 250 GB disk.
BUILD_CACHE_KEEP_GB = 10


def say(msg: str) -> None:
    print(f"image: {msg}", flush=True)


def version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def default_tag() -> str:
    return f"{IMAGE_NAME}:{version()}"


def variant_tag(tag: str, variant: str) -> str:
    """The default variant keeps the tag the manifests deploy; others get a suffix."""
    return tag if variant == VARIANTS[0] else f"{tag}-{variant}"


def pinned_torch() -> str:
    for line in (REPO / "k8s" / "requirements-image.txt").read_text().splitlines():
        if line.startswith("torch=="):
            return line.removeprefix("torch==")
    raise SystemExit("image: no torch pin in k8s/requirements-image.txt")


def cpu_torch_version(source: Path | None) -> str:
    """Copy the +cpu torch wheels for this Python (cp311) from `source` into
    k8s/wheelhouse/; return the one version there (the build's TORCH_CPU_VERSION)."""
    pattern = "torch-*+cpu-cp311-cp311-*.whl"
    if source is not None:
        found = sorted(source.glob(pattern))
        if not found:
            raise SystemExit(f"image: no {pattern} in {source}")
        for wheel in found:
            target = WHEELHOUSE / wheel.name
            if not target.exists():
                shutil.copy2(wheel, target)
    versions = {w.name.split("-")[1].removesuffix("+cpu") for w in WHEELHOUSE.glob(pattern)}
    if len(versions) != 1:
        raise SystemExit(
            f"image: the cpu variant needs one CPU torch in {WHEELHOUSE} ({pattern}), found "
            f"{sorted(versions) or 'none'}: --wheelhouse DIR, or pip download it there "
            "(k8s/Dockerfile, TORCH_VARIANT)"
        )
    (found_version,) = versions
    if found_version != pinned_torch():
        say(
            f"CPU TORCH {found_version}: not the pinned {pinned_torch()} (the wheel at hand); "
            "the archives and the model are checked against it by the container tests"
        )
    return found_version


# ---- the client -----------------------------------------------------------------------


def _client_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    m = re.search(r"version (\d+)\.(\d+)", out.stdout)
    return (int(m[1]), int(m[2])) if m else None


def client() -> tuple[str, bool]:
    """(docker client path, has buildx). A client without the buildx plugin must be one
    that still builds with BuildKit itself (DOCKER_BUILDKIT=1, Docker < 23): Debian 12's
    docker.io 20.10 is one; a newer static client without buildx is skipped."""
    candidates = [os.environ.get("DOCKER"), shutil.which("docker"), "/usr/bin/docker"]
    seen = []
    for path in filter(None, candidates):
        if path in seen or not os.access(path, os.X_OK):
            continue
        seen.append(path)
        buildx = subprocess.run([path, "buildx", "version"], capture_output=True, timeout=30)
        if buildx.returncode == 0:
            return path, True
        v = _client_version(path)
        if v is not None and v < (23, 0):
            return path, False
    raise SystemExit(
        f"image: no docker client that builds with BuildKit among {seen or ['(none)']}: "
        "install Debian's docker.io, or the buildx plugin for your client"
    )


def engine_running(docker: str) -> bool:
    done = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=60
    )
    return done.returncode == 0


# ---- the engine -----------------------------------------------------------------------


def install_engine() -> None:
    say("no Docker engine here: installing Debian's docker.io")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
        check=True,
        env=env,
    )


def _recorded() -> dict | None:
    """The dockerd this helper started, if it still runs."""
    try:
        state = json.loads(STATE.read_text())
        cmdline = Path(f"/proc/{state['pid']}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError):
        return None
    return state if cmdline and Path(cmdline[0].decode()).name == "dockerd" else None


def ensure_engine() -> bool:
    """Make an engine answer; True when this call started it (then stop it with
    stop_engine() when done), False when one was running already."""
    if shutil.which("dockerd") is None and not (
        shutil.which("docker") and engine_running(shutil.which("docker"))
    ):
        install_engine()
    docker, _ = client()
    if engine_running(docker):
        say("engine already running")
        return False
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    cmd = [dockerd, *DOCKERD_ARGS]
    DOCKERD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(DOCKERD_LOG, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    STATE.write_text(json.dumps({"pid": proc.pid, "cmd": cmd, "log": str(DOCKERD_LOG)}))
    deadline = time.monotonic() + ENGINE_WAIT_S
    while not engine_running(docker):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"image: dockerd did not come up; see {DOCKERD_LOG}")
        time.sleep(1)
    say(f"started dockerd pid {proc.pid}: {' '.join(cmd)} (log {DOCKERD_LOG})")
    return True


def stop_engine(pid: int | None = None) -> bool:
    """Stop the dockerd ensure_engine() started (only that one; only if it is `pid` when
    given). True if it stopped one."""
    state = _recorded()
    if state is None or (pid is not None and state["pid"] != pid):
        say("no dockerd started by this helper is running: leaving the engine alone")
        STATE.unlink(missing_ok=True)
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{state['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    STATE.unlink(missing_ok=True)
    say(f"stopped dockerd pid {state['pid']}")
    return True


# ---- the base image -------------------------------------------------------------------


def image_present(docker: str, ref: str) -> bool:
    done = subprocess.run([docker, "image", "inspect", ref], capture_output=True, timeout=60)
    return done.returncode == 0


def build_standin(docker: str) -> None:
    if shutil.which("mmdebstrap") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "mmdebstrap"],
            check=True,
            env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
        )
    with tempfile.TemporaryDirectory(prefix="colorizer-base-") as tmp:
        tar = Path(tmp) / "base.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={','.join(STANDIN_PACKAGES)}",
                "bookworm",
                str(tar),
            ],
            check=True,
        )
        subprocess.run(
            [
                docker,
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                "ENV LANG=C.UTF-8",
                "--change",
                'CMD ["python3"]',
                "--message",
                f"stand-in for {DEFAULT_BASE}: Debian bookworm minbase + "
                + " ".join(STANDIN_PACKAGES),
                str(tar),
                STANDIN_BASE,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def ensure_base(docker: str, base: str = DEFAULT_BASE) -> str:
    """The base image to build on: `base` if present or pullable; else, for the default
    base only, the local stand-in (built once)."""
    if image_present(docker, base):
        return base
    try:
        pulled = subprocess.run(
            [docker, "pull", "--quiet", base], capture_output=True, text=True, timeout=180
        )
        if pulled.returncode == 0:
            return base
        why = (pulled.stderr.strip().splitlines() or ["pull failed"])[-1]
    except subprocess.TimeoutExpired:
        why = "pull timed out"
    if base != DEFAULT_BASE:
        raise SystemExit(f"image: base image {base} is neither here nor pullable: {why}")
    if not image_present(docker, STANDIN_BASE):
        build_standin(docker)
    why = why.removeprefix("Error response from daemon: ")[:100]
    say(
        f"STAND-IN BASE: {base} cannot be pulled here ({why}); building on {STANDIN_BASE}, "
        "Debian bookworm's own Python 3.11 from Debian packages, not the official image"
    )
    return STANDIN_BASE


# ---- the build ------------------------------------------------------------------------


def pip_cert() -> str | None:
    """pip's CA bundle, if one is configured (PIP_CERT, else pip's global.cert)."""
    cert = os.environ.get("PIP_CERT")
    if not cert:
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "config", "get", "global.cert"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            cert = done.stdout.strip() if done.returncode == 0 else None
        except OSError:
            cert = None
    return cert if cert and Path(cert).is_file() else None


def build_command(
    docker: str,
    buildx: bool,
    base: str,
    tag: str,
    target: str | None = None,
    cert: str | None = None,
    build_args: tuple[str, ...] = (),
    contexts: tuple[str, ...] = (),
) -> list[str]:
    cmd = [docker, *(["buildx", "build", "--load"] if buildx else ["build"])]
    cmd += ["--file", str(DOCKERFILE), "--network", "host", "--tag", tag]
    cmd += ["--build-arg", f"BASE_IMAGE={base}"]
    cmd += ["--label", f"org.opencontainers.image.base.name={base}"]
    cmd += ["--label", f"org.opencontainers.image.version={version()}"]
    cmd += ["--label", TITLE_LABEL]
    for arg in build_args:
        cmd += ["--build-arg", arg]
    for context in contexts:
        cmd += ["--build-context", context]
    if target:
        cmd += ["--target", target]
    if cert:
        cmd += ["--secret", f"id=ca,src={cert}"]
    return [*cmd, str(REPO)]


def build(
    tag: str | None = None,
    base: str = DEFAULT_BASE,
    target: str | None = None,
    build_args: tuple[str, ...] = (),
    contexts: tuple[str, ...] = (),
    torch_variant: str = VARIANTS[0],
    wheelhouse: Path | None = None,
) -> str:
    """Build k8s/Dockerfile; returns the tag."""
    ensure_engine()
    docker, buildx = client()
    base = ensure_base(docker, base)
    tag = tag or variant_tag(default_tag(), torch_variant)
    if torch_variant != VARIANTS[0]:
        build_args = (*build_args, f"TORCH_VARIANT={torch_variant}")
    if torch_variant == "cpu":
        build_args = (*build_args, f"TORCH_CPU_VERSION={cpu_torch_version(wheelhouse)}")
    cert = pip_cert()
    cmd = build_command(docker, buildx, base, tag, target, cert, build_args, contexts)
    say(" ".join(cmd))
    env = os.environ | {"DOCKER_BUILDKIT": "1"}
    start = time.monotonic()
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    took = time.monotonic() - start
    size = subprocess.run(
        [docker, "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    say(f"built {tag} on {base} in {took:.0f} s, {int(size) / 1e9:.2f} GB")
    tidy(docker)
    return tag


# ---- the disk the builds take -----------------------------------------------------------


def reclaimed(output: str) -> str:
    """The size in docker's "Total reclaimed space: 1.2GB" line, or "0B"."""
    found = re.search(r"Total reclaimed space:\s*(\S+)", output)
    return found.group(1) if found else "0B"


def tidy_commands(docker: str, ours: bool, keep_gb: float) -> list[list[str]]:
    """What tidy() runs: remove this project's untagged images (only those: the label
    filter), then, on an engine this helper started (`ours`), trim the build cache to
    `keep_gb` (negative: leave it)."""
    cmds = [[docker, "image", "prune", "--force", "--filter", f"label={TITLE_LABEL}"]]
    if ours and keep_gb >= 0:
        keep = f"{int(keep_gb * 1e9)}"
        cmds.append([docker, "builder", "prune", "--force", "--keep-storage", keep])
    return cmds


def tidy(docker: str | None = None, keep_gb: float = BUILD_CACHE_KEEP_GB) -> None:
    """Remove the untagged images earlier builds left, and bound the build cache when the
    engine is the one this helper started."""
    docker = docker or client()[0]
    ours = _recorded() is not None
    for cmd in tidy_commands(docker, ours, keep_gb):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        what = "untagged colorizer images" if cmd[1] == "image" else "build cache"
        if done.returncode != 0:
            say(f"could not prune {what}: {done.stderr.strip()[:200]}")
        else:
            say(f"pruned {what}: {reclaimed(done.stdout)} reclaimed")
    if not ours:
        du = subprocess.run(
            [docker, "system", "df", "--format", "{{.Type}} {{.Size}}"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        cache = [line for line in du.stdout.splitlines() if line.startswith("Build Cache")]
        say(
            f"the engine is not one this helper started: its build cache is left alone "
            f"({cache[0].removeprefix('Build Cache ') if cache else 'size unknown'}; "
            "`docker builder prune --keep-storage` trims it)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python k8s/image.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure-engine", help="install/start a Docker engine if none answers")
    stop = sub.add_parser("stop-engine", help="stop the dockerd this helper started, only it")
    stop.add_argument("--pid", type=int, help="only if the recorded dockerd is this pid")
    t = sub.add_parser("tidy", help="remove superseded colorizer images; bound the build cache")
    t.add_argument("--keep-cache-gb", type=float, default=BUILD_CACHE_KEEP_GB)
    base = sub.add_parser("base", help="make the base image present (or its stand-in)")
    base.add_argument("--base", default=DEFAULT_BASE)
    b = sub.add_parser("build", help="build k8s/Dockerfile (ensures engine and base first)")
    b.add_argument("--tag", help=f"default {IMAGE_NAME}:<pyproject version>")
    b.add_argument("--base", default=DEFAULT_BASE, help="BASE_IMAGE build arg")
    b.add_argument("--target", help="Dockerfile stage (default: the last, serve)")
    b.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    b.add_argument("--build-context", action="append", default=[], metavar="NAME=PATH")
    b.add_argument("--torch-variant", choices=VARIANTS, default=VARIANTS[0])
    b.add_argument("--wheelhouse", type=Path, help="copy the cpu variant's torch wheel from here")
    args = parser.parse_args(argv)
    if args.command == "ensure-engine":
        ensure_engine()
    elif args.command == "stop-engine":
        stop_engine(args.pid)
    elif args.command == "tidy":
        tidy(keep_gb=args.keep_cache_gb)
    elif args.command == "base":
        ensure_engine()
        print(ensure_base(client()[0], args.base))
    else:
        build(
            args.tag,
            args.base,
            args.target,
            tuple(args.build_arg),
            tuple(args.build_context),
            args.torch_variant,
            args.wheelhouse,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
