"""The serving image run as the cpu overlay's pod runs it (issue #35).

Everything about how the containers run comes from the rendered manifest (`kubectl
kustomize k8s/overlays/cpu`), through tests/support/pod.py: users and groups, the security
context, the volumes (emptyDir as a sized tmpfs, ConfigMaps as their files, read-only),
env, command and args, CPU and memory limits, and one network namespace (--network host)
for all the pod's containers. Then, as the kubelet would: the startup and readiness
probes as written, liveness; photos over REST and gRPC and the metrics from the host on
the ports the manifest names; nothing written outside the mounts; and a deletion: each
container's preStop hook, SIGTERM with requests in flight, exit 0 within the grace period.
The gpu overlay runs on this machine's CPU to show what it does without a GPU.

The image: ``COLORIZER_IMAGE``, else the tag `python3 k8s/image.py build` (`make image`)
gives it; built here when missing. The manifests: ``COLORIZER_TEST_MANIFEST_CPU`` /
``_GPU`` name a rendered manifest to use instead of rendering the overlay (to show that a
broken spec fails this test). Needs a Docker engine: started by k8s/image.py when the
test runs as root, skipped otherwise when none answers.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from serving.client import NO_RETRY, ColorizerClient
from serving.front.grpc_front import parse_properties
from serving.runtime import constants as C
from tests.support.k8s import kustomize
from tests.support.paths import K8S, PHOTOS
from tests.support.photos import encode, mean_abs_l_diff
from tests.support.pod import Pod, RunningPod, docker

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

IMAGE_ENV = "COLORIZER_IMAGE"
MANIFEST_ENV = "COLORIZER_TEST_MANIFEST_{}"
IN_FLIGHT = 8  # REST requests in flight when SIGTERM comes
PHOTO = PHOTOS / "gcompris-farm-horse.jpg"  # 790x512: a few hundred ms of work on a CPU


def image_helper():
    """k8s/image.py (`make image`): the engine and the build, as a module."""
    spec = importlib.util.spec_from_file_location("colorizer_image_helper", K8S / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(overlay: str) -> Pod:
    """The overlay's rendered manifest, or the file the env var names instead."""
    override = os.environ.get(MANIFEST_ENV.format(overlay.upper()))
    text = Path(override).read_text() if override else kustomize(K8S / "overlays" / overlay)
    return Pod.from_yaml(text)


@pytest.fixture(scope="module")
def engine():
    helper = image_helper()
    if os.geteuid() != 0:
        done = docker("info", check=False) if shutil.which("docker") else None
        if done is None or done.returncode != 0:
            pytest.skip("no Docker engine answers, and only root may start one (k8s/image.py)")
        yield helper
        return
    started = helper.ensure_engine()
    yield helper
    if started:
        helper.stop_engine()


@pytest.fixture(scope="module")
def image(engine) -> str:
    tag = os.environ.get(IMAGE_ENV) or engine.default_tag()
    if docker("image", "inspect", tag, check=False).returncode != 0:
        if os.environ.get(IMAGE_ENV):
            pytest.fail(f"{IMAGE_ENV}={tag}: no such image here")
        engine.build(tag)  # what `make image` does
    return tag


@pytest.fixture(scope="module")
def pods(engine) -> dict[str, Pod]:
    out = {o: rendered(o) for o in ("cpu", "gpu")}
    for overlay, pod in out.items():
        for c in pod.containers:  # the image the manifest deploys is the one built here
            name = c["image"].rsplit("@", 1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
            assert name == engine.IMAGE_NAME, (overlay, c["name"], c["image"])
    return out


def photo_bytes(path: Path = PHOTO, scale: int = 1) -> bytes:
    """A gray JPEG of ``path`` (``scale`` times its size): any color in the answer is the
    model's."""
    img = Image.open(path).convert("L")
    img = img.resize((img.width * scale, img.height * scale)) if scale > 1 else img
    return encode(img, "JPEG", quality=95)


def assert_colorized(sent: bytes, answer: bytes) -> None:
    """The answer is a color image of the input's size, its luminance kept, with chroma."""
    img = Image.open(io.BytesIO(answer))
    img.load()
    assert img.mode == "RGB", img.mode
    assert img.size == Image.open(io.BytesIO(sent)).size
    lab = np.asarray(img.convert("LAB"), dtype=np.float32)  # Pillow: a, b offset by 128
    chroma = np.hypot(lab[..., 1] - 128, lab[..., 2] - 128)
    assert chroma.mean() > 3.0, f"mean chroma {chroma.mean():.2f}: not colorized"
    assert mean_abs_l_diff(sent, answer) < 4.0


def archives_named(pod: Pod) -> list[str]:
    """The archive files the pod's args load (`--models name=file.mar ...`)."""
    found = []
    for c in pod.containers:
        args = pod.command_line(c)[1]
        if "--models" in args:
            following = args[args.index("--models") + 1 :]
            for token in following:
                if token.startswith("-"):
                    break
                found.append(token.partition("=")[2])
    return found


def model_store(pod: Pod) -> str:
    """model_store of the config.properties the pod mounts (from its ConfigMap)."""
    for volume in pod.volumes.values():
        if "configMap" in volume:
            data = pod.config_map(volume["configMap"]["name"]).get("data", {})
            props = parse_properties(data.get("config.properties", ""))
            if "model_store" in props:
                return props["model_store"]
    raise AssertionError("no ConfigMap with a config.properties naming model_store")


def scratch_image(engine, tag: str, labels: dict[str, str]) -> str:
    """Build an empty image (FROM scratch) with these labels under `tag`, with the client
    the helper builds with; its id."""
    client, buildx = engine.client()
    build = [client, *(["buildx", "build", "--load"] if buildx else ["build"])]
    args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
    subprocess.run(
        [*build, "--quiet", "--tag", tag, *args, "-"],
        input="FROM scratch\nLABEL purpose=colorizer-test\n",
        text=True,
        check=True,
        capture_output=True,
        timeout=120,
        env=os.environ | {"DOCKER_BUILDKIT": "1"},
    )
    return docker("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()


def test_builds_remove_only_the_colorizer_images_they_superseded(engine, image):
    """Each build of a changed tree untags the last one (GBs); `make image` removes those
    (k8s/image.py tidy), so repeated CI runs on one machine do not fill its disk. Two
    rebuilds of one tag, one labelled as the helper labels its images and one not: tidy
    removes the first's old image and leaves the other's."""
    title, value = engine.TITLE_LABEL.split("=")
    labels = json.loads(
        docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout
    )
    assert labels.get(title) == value, labels
    ours = scratch_image(engine, "colorizer-tidy-probe:1", {title: value, "build": "1"})
    scratch_image(engine, "colorizer-tidy-probe:1", {title: value, "build": "2"})
    theirs = scratch_image(engine, "someone-else-probe:1", {"build": "1"})
    scratch_image(engine, "someone-else-probe:1", {"build": "2"})
    try:
        engine.tidy()
        assert docker("image", "inspect", ours, check=False).returncode != 0, "not removed"
        assert docker("image", "inspect", theirs, check=False).returncode == 0, "removed"
        left = docker(
            "images", "-q", "--filter", "dangling=true", "--filter", f"label={engine.TITLE_LABEL}"
        )
        assert left.stdout.split() == []
    finally:
        docker(
            "rmi", "--force", theirs, "colorizer-tidy-probe:1", "someone-else-probe:1", check=False
        )


def test_each_overlay_loads_an_archive_the_image_has(pods, image):
    """`docker run --rm` of the image as each overlay's container: the archive its args
    name is a readable file in the model store its config.properties names."""
    for overlay, pod in pods.items():
        names = archives_named(pod)
        assert names, f"{overlay}: no --models in any container's args"
        store = model_store(pod)
        for name in names:
            done = docker(
                "run", "--rm", "--network", "host", "--user", _user(pod), "--entrypoint",
                "test", image, "-r", f"{store}/{name}", check=False,
            )  # fmt: skip
            assert done.returncode == 0, f"{overlay}: {store}/{name} is not in {image}"


def _user(pod: Pod) -> str:
    (c,) = [c for c in pod.containers if "--models" in pod.command_line(c)[1]]
    sc = pod.security(c)
    return f"{sc['runAsUser']}:{sc['runAsGroup']}"


@pytest.fixture(scope="class")
def cpu_pod(pods, image):
    """The cpu overlay's pod, started and past its startup and readiness probes."""
    with RunningPod(pods["cpu"], image) as running:
        for note in running.notes:
            print(f"pod: {note}")
        failures = {c: f for c, f in running.await_ready().items() if f}
        if failures:
            pytest.fail(
                "probes failed:\n" + "\n".join(f"{c}: {f[0]}" for c, f in failures.items()),
                pytrace=False,
            )
        yield running


class TestCpuPod:
    """One run of the cpu overlay's pod; the last test deletes it."""

    def test_every_container_passes_its_probes_as_the_kubelet_runs_them(self, cpu_pod):
        """startupProbe then readinessProbe passed in the fixture (each within its
        periodSeconds x failureThreshold); liveness passes now, for every container."""
        for name in cpu_pod.names:
            probe = cpu_pod.pod.container(name).get("livenessProbe")
            if probe is not None:
                result = cpu_pod.probe_once(name, probe)
                assert result.ok, f"{name} liveness: {result.detail}"

    def test_each_container_runs_under_its_security_context(self, cpu_pod, image):
        """What the kernel reports for every process matches the merged security context,
        and the user is the image's own (the one its files were made for)."""
        image_uid, _, image_gid = (
            docker("image", "inspect", "--format", "{{.Config.User}}", image)
            .stdout.strip()
            .partition(":")
        )
        for name in cpu_pod.names:
            c = cpu_pod.pod.container(name)
            sc = cpu_pod.pod.security(c)
            assert str(sc.get("runAsUser")) == image_uid, (
                f"{name} runs as uid {sc.get('runAsUser')}, the image's user is {image_uid}"
            )
            if image_gid:
                assert str(sc.get("runAsGroup")) == image_gid, (name, sc.get("runAsGroup"))
            procs = cpu_pod.processes(name)
            assert procs, name
            for p in procs:
                uids, gids = set(p["Uid"].split()), set(p["Gid"].split())
                assert uids == {str(sc["runAsUser"])}, (name, p["cmdline"], p["Uid"])
                assert gids == {str(sc["runAsGroup"])}, (name, p["cmdline"], p["Gid"])
                if sc.get("fsGroup") is not None:
                    assert str(sc["fsGroup"]) in p["Groups"].split(), (name, p["Groups"])
                if "ALL" in sc.get("capabilities", {}).get("drop", []):
                    assert int(p["CapEff"], 16) == int(p["CapBnd"], 16) == 0, (name, p)
                if sc.get("allowPrivilegeEscalation") is False:
                    assert p["NoNewPrivs"].strip() == "1", (name, p["cmdline"])
                assert p["Seccomp"].strip() == "2", (name, p["cmdline"])  # filter mode
            host = cpu_pod.inspect(name)["HostConfig"]
            assert host["ReadonlyRootfs"] == bool(sc.get("readOnlyRootFilesystem"))
            assert host["NetworkMode"] == "host"

    def test_photos_come_back_colorized_over_rest_and_grpc(self, cpu_pod):
        sent = photo_bytes()
        http, grpc_port = cpu_pod.pod.port("http"), cpu_pod.pod.port("grpc")
        with ColorizerClient(url=f"http://127.0.0.1:{http}", retry=NO_RETRY) as rest:
            assert_colorized(sent, rest.colorize(sent).data)
        with ColorizerClient(grpc_target=f"127.0.0.1:{grpc_port}", retry=NO_RETRY) as grpc:
            assert_colorized(sent, grpc.colorize(sent).data)

    def test_metrics_port_serves_the_colorizer_series(self, cpu_pod):
        url = f"http://127.0.0.1:{cpu_pod.pod.port('metrics')}/metrics"
        text = requests.get(url, timeout=10).text
        names = {line.split("{")[0].split()[0] for line in text.splitlines() if line[:1].isalpha()}
        assert "ts_inference_requests_total" in names, text[:2000]
        assert any(n.startswith("colorizer_") for n in names), sorted(names)

    def test_nothing_is_written_outside_the_mounts(self, cpu_pod):
        for name in cpu_pod.names:
            written = cpu_pod.diff(name)
            assert not written, f"{name} wrote outside its mounts: {written[:8]}"

    def test_deletion_drains_in_flight_requests_and_every_container_exits_zero(self, cpu_pod):
        """Each container's preStop hook as written, all at once; then SIGTERM to each
        after its own hook, with IN_FLIGHT REST requests in flight at the first one. All
        are answered 200, and every container exits 0 within the grace period."""
        sent = photo_bytes(scale=4)  # 6.5 MP: a second or so each, so they are in flight
        url = f"http://127.0.0.1:{cpu_pod.pod.port('http')}/predictions/{C.MODEL_NAME}"
        answers: list[tuple[int, float, str]] = []
        first_term: list[float] = []
        lock = threading.Lock()
        pool = ThreadPoolExecutor(IN_FLIGHT)

        def one() -> None:
            try:
                r = requests.post(url, data=sent, timeout=120)
                answers.append((r.status_code, time.monotonic(), r.text[:200]))
            except requests.RequestException as exc:
                answers.append((0, time.monotonic(), repr(exc)[:200]))

        def before_term(container: str) -> None:
            with lock:
                if not first_term:  # requests in flight when the first SIGTERM comes
                    for _ in range(IN_FLIGHT):
                        pool.submit(one)
                    time.sleep(0.2)  # sent, not yet answered
                    first_term.append(time.monotonic())

        stopped = cpu_pod.terminate(before_term)
        pool.shutdown(wait=True)
        grace = cpu_pod.pod.grace_seconds
        report = "\n".join(
            f"{n}: preStop {s.pre_stop and s.pre_stop.detail!r}, exit {s.exit_code} after "
            f"{s.seconds:.1f} s{' (SIGKILL at the grace end)' if s.killed else ''}"
            for n, s in stopped.items()
        )
        print(report)
        problems = []
        for name, s in stopped.items():
            if s.pre_stop is not None and not s.pre_stop.ok:
                problems.append(f"{name}: preStop failed: {s.pre_stop.detail}")
            if s.killed or s.seconds > grace:
                problems.append(f"{name}: still running at the end of the {grace:g} s grace")
            if s.exit_code != 0:
                problems.append(f"{name}: exit code {s.exit_code}\n{cpu_pod.logs(name, 20)}")
        late = [a for a in answers if a[1] > first_term[0]]
        if not late:
            problems.append("every request was answered before SIGTERM: none was in flight")
        refused = [a for a in answers if a[0] != 200]
        if len(answers) != IN_FLIGHT or refused:
            problems.append(f"{len(refused)} of {IN_FLIGHT} in-flight requests not answered 200: "
                            f"{[(a[0], a[2][:120]) for a in refused]}")  # fmt: skip
        for name in cpu_pod.names:  # nor did shutting down write anything
            if cpu_pod.diff(name):
                problems.append(f"{name} wrote outside its mounts: {cpu_pod.diff(name)}")
        assert not problems, "\n".join(problems)


REFUSAL_WITHIN_S = 120  # JVM start, archive unpack, the worker's torch import; then a line


def test_gpu_overlay_on_a_cpu_machine_refuses_in_words(pods, image):
    """The gpu overlay's pod without a GPU (no --gpus): TorchServe counts the GPU that
    CUDA_VISIBLE_DEVICES names and gives it to the worker, which cannot use it. The gpu
    profile says ``device: cuda`` (serving/launcher/model-config.yaml), so the worker
    refuses at once with one CANNOT_START line naming the cpu archive, and the pod is never
    ready: a clear refusal, not a CPU run at batch 64 that never finishes warming up."""
    from serving.runtime.constants import CANNOT_START

    pod = pods["gpu"]
    with RunningPod(pod, image, gpus=False) as running:
        for note in running.notes:
            print(f"pod: {note}")
        deadline = time.monotonic() + REFUSAL_WITHIN_S
        logs = ""
        while time.monotonic() < deadline and CANNOT_START not in logs:
            time.sleep(2)
            logs = running.logs("torchserve")
        refusals = [line for line in logs.splitlines() if CANNOT_START in line]
        assert refusals, f"no refusal within {REFUSAL_WITHIN_S} s:\n{logs[-3000:]}"
        assert "needs a CUDA GPU" in refusals[0] and "colorizer-cpu.mar" in refusals[0]
        probe = pod.container("torchserve")["readinessProbe"]
        assert not running.probe_once("torchserve", probe).ok, "a refusing pod must not be ready"
