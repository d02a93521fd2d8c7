"""A rendered pod spec run with `docker run` as the kubelet would run it.

``Pod`` reads the pod template of a rendered manifest (``kubectl kustomize``) and turns
each container into a `docker run` command line: user and groups, the security context,
volumes (emptyDir as a sized tmpfs, configMap as its files bind-mounted read-only), env
(``resourceFieldRef`` resolved), command/args, workingDir, CPU and memory limits, and the
host network that stands in for the pod's one network namespace. ``RunningPod`` starts
those containers, runs their probes the way the kubelet does (``docker exec`` for exec
probes, HTTP and TCP from the host), and stops them the way the kubelet does: each
container's preStop hook, then SIGTERM, then SIGKILL at the end of the grace period.

Strict by design: a field of the pod spec this module does not know how to apply raises
``Unsupported``, so a new field in the manifest fails the container test loudly instead
of being silently left out of the run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

DOCKER = shutil.which("docker") or "docker"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


class Unsupported(Exception):
    """The pod spec asks for something this module cannot reproduce with docker."""


# ---- Kubernetes values ---------------------------------------------------------------------

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$")


def quantity(value: str | int | float) -> Fraction:
    """A Kubernetes resource quantity ("2", "500m", "8Gi", "1e3") as an exact number."""
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number = Fraction(m[1])
    if m[2] is not None:
        return number * Fraction(10) ** int(m[2])
    return number * _SUFFIXES[m[3] or ""]


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values, command and args ($$ is a literal $)."""

    def sub(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        return env.get(m[1], m[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def _check_keys(what: str, obj: dict, known: set[str]) -> None:
    unknown = set(obj) - known
    if unknown:
        raise Unsupported(f"{what}: {sorted(unknown)} not reproduced by tests/support/pod.py")


# ---- the pod spec -> docker run ------------------------------------------------------------

# Container fields and what becomes of them. Applied: in run_args. Checked elsewhere:
# probes and lifecycle (RunningPod), ports (the host network; probes resolve their names).
# Not applicable to one local run: pull policy and the termination message.
CONTAINER_FIELDS = {
    "name", "image", "command", "args", "workingDir", "env", "resources", "securityContext",
    "volumeMounts", "ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle",
    "imagePullPolicy", "terminationMessagePath", "terminationMessagePolicy",
}  # fmt: skip
# Pod fields: scheduling, identity and Service links have no meaning on one host.
POD_FIELDS = {
    "containers", "volumes", "securityContext", "terminationGracePeriodSeconds",
    "serviceAccountName", "automountServiceAccountToken", "enableServiceLinks",
    "topologySpreadConstraints", "nodeSelector", "tolerations", "affinity",
    "priorityClassName", "restartPolicy", "dnsPolicy", "schedulerName",
}  # fmt: skip
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups",
                "seccompProfile", "fsGroupChangePolicy"}  # fmt: skip
CONTAINER_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile",
                      "allowPrivilegeEscalation", "readOnlyRootFilesystem", "privileged",
                      "capabilities", "procMount"}  # fmt: skip
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass
class RunPlan:
    """One container's `docker run` arguments, and what could only be approximated."""

    args: list[str]
    notes: list[str] = field(default_factory=list)


class Pod:
    """The pod template of a rendered manifest (the one workload in it), and its ConfigMaps."""

    def __init__(self, docs: list[dict]) -> None:
        self.docs = [d for d in docs if d]
        workloads = [d for d in self.docs if d.get("kind") in WORKLOAD_KINDS]
        if len(workloads) != 1:
            raise ValueError(f"expected one workload in the manifest, found {len(workloads)}")
        self.workload = workloads[0]
        self.spec: dict = self.workload["spec"]["template"]["spec"]
        _check_keys("pod spec", self.spec, POD_FIELDS)
        for c in self.containers:
            _check_keys(f"container {c['name']}", c, CONTAINER_FIELDS)
        self.volumes = {v["name"]: v for v in self.spec.get("volumes", [])}

    @classmethod
    def from_yaml(cls, text: str) -> Pod:
        import yaml

        return cls(list(yaml.safe_load_all(text)))

    @property
    def containers(self) -> list[dict]:
        return self.spec["containers"]

    def container(self, name: str) -> dict:
        (found,) = [c for c in self.containers if c["name"] == name]
        return found

    @property
    def grace_seconds(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    def config_map(self, name: str) -> dict:
        found = [
            d for d in self.docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name
        ]
        if len(found) != 1:
            raise ValueError(f"ConfigMap {name} is not in the rendered manifest")
        return found[0]

    def security(self, container: dict) -> dict:
        """The container's effective security context: the pod's, overridden per field by
        the container's (fsGroup and supplementalGroups are pod-level only)."""
        pod_sc = self.spec.get("securityContext", {})
        own = container.get("securityContext", {})
        _check_keys("pod securityContext", pod_sc, POD_SECURITY)
        _check_keys(f"{container['name']} securityContext", own, CONTAINER_SECURITY)
        return {**pod_sc, **own}

    def env(self, container: dict) -> dict[str, str]:
        """The container's env as the kubelet resolves it (in order, $(VAR) expanded)."""
        env: dict[str, str] = {}
        if container.get("envFrom"):
            raise Unsupported("envFrom")
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = _expand(str(var["value"]), env)
                continue
            source = var.get("valueFrom", {})
            if "resourceFieldRef" in source:
                env[var["name"]] = self._resource_field(container, source["resourceFieldRef"])
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                env[var["name"]] = self.config_map(ref["name"])["data"][ref["key"]]
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                values = {
                    "metadata.namespace": self.workload["metadata"].get("namespace", "default"),
                    "status.podIP": "127.0.0.1",
                    "status.hostIP": "127.0.0.1",
                    "spec.nodeName": socket.gethostname(),
                }
                if path not in values:
                    raise Unsupported(f"env {var['name']}: fieldRef {path}")
                env[var["name"]] = values[path]
            else:
                raise Unsupported(f"env {var['name']}: valueFrom {sorted(source)}")
        return env

    def _resource_field(self, container: dict, ref: dict) -> str:
        """resourceFieldRef as the kubelet computes it: ceil(quantity / divisor)."""
        source = self.container(ref["containerName"]) if "containerName" in ref else container
        kind, _, resource = ref["resource"].partition(".")
        value = source.get("resources", {}).get(kind, {}).get(resource)
        if value is None:
            raise Unsupported(f"{ref['resource']} of {source['name']} is unset (node allocatable)")
        return str(math.ceil(quantity(value) / quantity(ref.get("divisor", "1"))))

    def command_line(self, container: dict) -> tuple[str | None, list[str]]:
        """(entrypoint or None, arguments after the image): `command` replaces the image's
        ENTRYPOINT (and so its CMD), `args` replace its CMD."""
        env = self.env(container)
        command = [_expand(a, env) for a in container.get("command", [])]
        args = [_expand(a, env) for a in container.get("args", [])]
        if command:
            return command[0], command[1:] + args
        return None, args

    def run_args(
        self,
        container: dict,
        *,
        docker_name: str,
        image: str,
        image_user: str,
        files: Path,
        shared_volumes: dict[str, str] | None = None,
        gpus: bool = True,
        host_cpus: int | None = None,
    ) -> RunPlan:
        """`docker run` arguments (after `docker run`) for ``container``.

        ``image_user``: the image's USER (for runAsNonRoot without runAsUser); ``files``:
        where ConfigMap contents are written; ``shared_volumes``: emptyDir name -> docker
        volume, for emptyDirs more than one container mounts (a --tmpfs is private);
        ``gpus``: pass GPU limits on as --gpus; ``host_cpus``: CPU limits above this are
        capped (docker refuses more CPUs than the host has) and the cap noted.
        """
        name = container["name"]
        plan = RunPlan(["--detach", "--name", docker_name, "--network", "host"])
        args, notes = plan.args, plan.notes

        sc = self.security(container)
        uid, gid = sc.get("runAsUser"), sc.get("runAsGroup")
        if sc.get("runAsNonRoot"):
            effective = uid if uid is not None else image_user.partition(":")[0] or "0"
            if not str(effective).isdigit():
                raise ValueError(f"{name}: runAsNonRoot and a non-numeric image user {effective}")
            if int(effective) == 0:
                raise ValueError(f"{name}: runAsNonRoot, but the container would run as root")
        if uid is not None:
            args += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
        elif gid is not None:
            args += ["--user", f"{image_user.partition(':')[0] or 0}:{gid}"]
        for group in [sc.get("fsGroup"), *sc.get("supplementalGroups", [])]:
            if group is not None:
                args += ["--group-add", str(group)]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("privileged"):
            args.append("--privileged")
        caps = sc.get("capabilities", {})
        _check_keys(f"{name} capabilities", caps, {"drop", "add"})
        args += [a for c in caps.get("drop", []) for a in ("--cap-drop", c)]
        args += [a for c in caps.get("add", []) for a in ("--cap-add", c)]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        seccomp = sc.get("seccompProfile", {}).get("type", "RuntimeDefault")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp != "RuntimeDefault":  # RuntimeDefault: docker's default profile
            raise Unsupported(f"{name}: seccompProfile {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            raise Unsupported(f"{name}: procMount {sc['procMount']}")

        for mount in container.get("volumeMounts", []):
            args += self._mount(container, mount, sc, files, shared_volumes or {})

        for key, value in self.env(container).items():
            args += ["--env", f"{key}={value}"]
        if "workingDir" in container:
            args += ["--workdir", container["workingDir"]]

        resources = container.get("resources", {})
        limits, requests = resources.get("limits", {}), resources.get("requests", {})
        _check_keys(f"{name} limits", limits, {"cpu", "memory", "ephemeral-storage", GPU_RESOURCE})
        if "memory" in limits:
            memory = str(math.ceil(quantity(limits["memory"])))
            args += ["--memory", memory, "--memory-swap", memory]  # no swap, as the kubelet
        if "cpu" in limits:
            cpus = quantity(limits["cpu"])
            if host_cpus is not None and cpus > host_cpus:
                notes.append(f"{name}: CPU limit {limits['cpu']} capped to this host's {host_cpus}")
                cpus = Fraction(host_cpus)
            args += ["--cpus", f"{float(cpus):g}"]
        if "cpu" in requests:  # the kubelet's cpu.shares: 1024 per core, at least 2
            args += ["--cpu-shares", str(max(2, int(quantity(requests["cpu"]) * 1024)))]
        if "ephemeral-storage" in limits:
            notes.append(
                f"{name}: ephemeral-storage limit {limits['ephemeral-storage']}: not enforced by"
                " docker on overlay2; the writable places are the sized tmpfs mounts"
            )
        if GPU_RESOURCE in limits:
            if gpus:
                args += ["--gpus", str(limits[GPU_RESOURCE])]
            else:
                notes.append(f"{name}: {GPU_RESOURCE}={limits[GPU_RESOURCE]} not given (no --gpus)")

        entrypoint, rest = self.command_line(container)
        if entrypoint is not None:
            args += ["--entrypoint", entrypoint]
        args += [image, *rest]
        return plan

    def _mount(self, container, mount, sc, files: Path, shared: dict[str, str]) -> list[str]:
        _check_keys("volumeMount", mount, {"name", "mountPath", "readOnly", "subPath"})
        volume = self.volumes[mount["name"]]
        path, read_only = mount["mountPath"], bool(mount.get("readOnly"))
        if "emptyDir" in volume:
            if "subPath" in mount:
                raise Unsupported(f"subPath of emptyDir {mount['name']}")
            if mount["name"] in shared:
                return ["--mount", f"type=volume,src={shared[mount['name']]},dst={path}"
                        + (",readonly" if read_only else "")]  # fmt: skip
            return ["--tmpfs", f"{path}:{self.tmpfs_options(volume, sc, read_only)}"]
        if "configMap" in volume:
            src = self.write_config_map(volume, files / mount["name"])
            if "subPath" in mount:
                src = src / mount["subPath"]
            # A ConfigMap volume is read-only whatever the mount says.
            return ["--mount", f"type=bind,src={src},dst={path},readonly"]
        raise Unsupported(f"volume {mount['name']}: {sorted(set(volume) - {'name'})}")

    @staticmethod
    def tmpfs_options(volume: dict, sc: dict, read_only: bool = False) -> str:
        """An emptyDir as a tmpfs: its sizeLimit, and the kubelet's permissions: mode 0777,
        with fsGroup the group owner and the setgid bit set, as fsGroup ownership does."""
        empty = volume["emptyDir"] or {}
        _check_keys(f"emptyDir {volume['name']}", empty, {"sizeLimit", "medium"})
        opts = ["ro" if read_only else "rw", "exec", "nosuid", "nodev"]
        if "sizeLimit" in empty:
            opts.append(f"size={math.ceil(quantity(empty['sizeLimit']))}")
        if sc.get("fsGroup") is not None:
            opts += [f"gid={sc['fsGroup']}", "mode=2777"]
        else:
            opts.append("mode=0777")
        return ",".join(opts)

    def write_config_map(self, volume: dict, target: Path) -> Path:
        """The files a configMap volume shows: every key (or the listed items), with the
        volume's defaultMode (0644), in a directory readable by any user."""
        ref = volume["configMap"]
        _check_keys(f"configMap volume {volume['name']}", ref, {"name", "items", "defaultMode"})
        cm = self.config_map(ref["name"])
        data = {k: v.encode() for k, v in cm.get("data", {}).items()}
        if cm.get("binaryData"):
            import base64

            data |= {k: base64.b64decode(v) for k, v in cm["binaryData"].items()}
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        for item in items:
            dest = target / item["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data[item["key"]])
            dest.chmod(item.get("mode", ref.get("defaultMode", 0o644)))
        return target

    def mount_paths(self, container: dict) -> list[str]:
        return [m["mountPath"] for m in container.get("volumeMounts", [])]

    def named_ports(self, container: dict) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}

    def port(self, name: str) -> int:
        """The containerPort named ``name``, among all the pod's containers (exactly one)."""
        found = [
            p["containerPort"]
            for c in self.containers
            for p in c.get("ports", [])
            if p.get("name") == name
        ]
        if len(found) != 1:
            raise ValueError(f"expected one container port named {name}, found {found}")
        return found[0]


# ---- docker ----------------------------------------------------------------------------------


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} ... failed: {done.stderr.strip()}")
    return done


def image_user(image: str) -> str:
    """The image's USER ("10001:10001"; "" when it runs as root)."""
    return json.loads(docker("image", "inspect", image).stdout)[0]["Config"].get("User") or ""


GiveUp = Callable[["RunningPod", str], "str | None"]


@dataclass
class ProbeResult:
    ok: bool
    detail: str


@dataclass
class Stopped:
    """How a container ended: its preStop hook's result, exit code, seconds from the start
    of the termination, and whether the kubelet would have had to SIGKILL it."""

    pre_stop: ProbeResult | None
    exit_code: int | None
    seconds: float
    killed: bool


class RunningPod:
    """The pod's containers running under docker. Use as a context manager: every container
    and volume it made is removed on exit, whatever happened."""

    def __init__(
        self,
        pod: Pod,
        image: str,
        *,
        gpus: bool = True,
        containers: list[str] | None = None,
    ) -> None:
        self.pod, self.image, self.gpus = pod, image, gpus
        self.selected = [c for c in pod.containers if containers is None or c["name"] in containers]
        self.suffix = uuid.uuid4().hex[:8]
        self.names = {c["name"]: f"colorizer-test-{c['name']}-{self.suffix}" for c in self.selected}
        self.started: dict[str, float] = {}
        self.notes: list[str] = []
        self.volumes: list[str] = []
        self.files = Path(tempfile.mkdtemp(prefix="pod-files-"))
        self.files.chmod(0o755)

    # -- lifecycle

    def __enter__(self) -> RunningPod:
        try:
            self.start()
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def start(self) -> None:
        """`docker run` each container in the pod's order, as the kubelet starts them."""
        user = image_user(self.image)
        # One network namespace with the host: a port someone else holds would answer for us.
        for c in self.selected:
            for port in c.get("ports", []):
                with socket.socket() as sock:
                    sock.settimeout(1)
                    if sock.connect_ex(("127.0.0.1", port["containerPort"])) == 0:
                        raise RuntimeError(
                            f"port {port['containerPort']} ({c['name']}) is already in use on"
                            " this host: stop what listens there first"
                        )
        mounted: dict[str, int] = {}
        for c in self.selected:
            for m in c.get("volumeMounts", []):
                mounted[m["name"]] = mounted.get(m["name"], 0) + 1
        shared = {}
        for vol_name, count in mounted.items():
            volume = self.pod.volumes[vol_name]
            if "emptyDir" in volume and count > 1:  # one emptyDir seen by several containers
                shared[vol_name] = f"colorizer-test-{vol_name}-{self.suffix}"
                opts = Pod.tmpfs_options(volume, self.pod.spec.get("securityContext", {}))
                docker("volume", "create", "--driver", "local", "--opt", "type=tmpfs",
                       "--opt", "device=tmpfs", "--opt", f"o={opts}", shared[vol_name])  # fmt: skip
                self.volumes.append(shared[vol_name])
        for c in self.selected:
            plan = self.pod.run_args(
                c,
                docker_name=self.names[c["name"]],
                image=self.image,
                image_user=user,
                files=self.files / c["name"],
                shared_volumes=shared,
                gpus=self.gpus,
                host_cpus=os.cpu_count(),
            )
            self.notes += plan.notes
            docker("run", *plan.args)
            self.started[c["name"]] = time.monotonic()

    def remove(self) -> None:
        for name in self.names.values():
            docker("rm", "--force", "--volumes", name, check=False, timeout=60)
        for volume in self.volumes:
            docker("volume", "rm", "--force", volume, check=False, timeout=60)
        shutil.rmtree(self.files, ignore_errors=True)

    # -- looking at it

    def inspect(self, container: str) -> dict:
        return json.loads(docker("inspect", self.names[container]).stdout)[0]

    def running(self, container: str) -> bool:
        return bool(self.inspect(container)["State"]["Running"])

    def logs(self, container: str, tail: int | None = None) -> str:
        args = ["logs"] + (["--tail", str(tail)] if tail else []) + [self.names[container]]
        done = docker(*args, check=False)
        return done.stdout + done.stderr

    def exec(self, container: str, command: list[str], timeout: float) -> ProbeResult:
        """`docker exec` as the kubelet's exec actions: the container's user, env, workdir."""
        try:
            done = subprocess.run(
                [DOCKER, "exec", self.names[container], *command],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return ProbeResult(False, f"{command} timed out after {timeout:g} s")
        out = (done.stdout + done.stderr).strip()
        return ProbeResult(done.returncode == 0, f"exit {done.returncode}: {out[-500:]}")

    def diff(self, container: str) -> list[str]:
        """`docker diff` lines, less the mount points docker itself made for the mounts
        (a mount path and the directories above it)."""
        mounts = self.pod.mount_paths(self.pod.container(container))
        made = {str(Path(p)) for p in mounts}
        above = {str(parent) for p in mounts for parent in Path(p).parents}
        lines = docker("diff", self.names[container]).stdout.splitlines()
        return [
            line
            for line in lines
            if not (
                line.startswith("A ")
                and line[2:] in made
                or line.startswith("C ")
                and line[2:] in above
            )
        ]

    def processes(self, container: str) -> list[dict[str, str]]:
        """/proc status of every process of the container (seen from the host)."""
        top = docker("top", self.names[container], "-eo", "pid").stdout.split()[1:]
        out = []
        for pid in top:
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # ended meanwhile
            status = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
            status["cmdline"] = (
                Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            )
            out.append(status)
        return out

    # -- probes, as the kubelet runs them

    def probe_once(self, container: str, probe: dict) -> ProbeResult:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "exec" in probe:
            return self.exec(container, probe["exec"]["command"], timeout)
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(container, get["port"])
            host = get.get("host", "127.0.0.1")  # the pod IP; the host network here
            url = f"{get.get('scheme', 'HTTP').lower()}://{host}:{port}{get.get('path', '/')}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers), timeout=timeout
                ) as resp:
                    status = resp.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except (OSError, ValueError) as exc:
                return ProbeResult(False, f"GET {url}: {exc}")
            return ProbeResult(200 <= status < 400, f"GET {url}: {status}")
        if "tcpSocket" in probe:
            port = self._port(container, probe["tcpSocket"]["port"])
            host = probe["tcpSocket"].get("host", "127.0.0.1")
            try:
                socket.create_connection((host, port), timeout=timeout).close()
            except OSError as exc:
                return ProbeResult(False, f"connect {host}:{port}: {exc}")
            return ProbeResult(True, f"connect {host}:{port}: ok")
        raise Unsupported(f"{container}: probe {sorted(probe)}")

    def _port(self, container: str, port: int | str) -> int:
        """A probe's port: a number, or a name among THAT container's ports."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        ports = self.pod.named_ports(self.pod.container(container))
        if port not in ports:
            raise ValueError(f"{container}: no port named {port} (has {sorted(ports)})")
        return ports[port]

    def await_probe(
        self, container: str, kind: str, since: float, give_up: GiveUp | None = None
    ) -> ProbeResult:
        """Run ``kind`` (startupProbe, readinessProbe) every periodSeconds from
        initialDelaySeconds after ``since`` (the container's start) until successThreshold
        successes in a row: a pass; or failureThreshold failures in a row: a fail (the
        kubelet would restart the container, or keep the pod out of its Services). Also a
        fail if the container ends, or if ``give_up`` gives a reason."""
        probe = self.pod.container(container).get(kind)
        if probe is None:
            return ProbeResult(True, f"no {kind}")
        period = float(probe.get("periodSeconds", 10))
        failures_allowed = int(probe.get("failureThreshold", 3))
        successes_needed = int(probe.get("successThreshold", 1))
        # From the container's start, but not before the probe before it has passed.
        next_at = max(time.monotonic(), since + float(probe.get("initialDelaySeconds", 0)))
        failures = successes = 0
        while True:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            if not self.running(container):
                return ProbeResult(False, f"{container} exited:\n{self.logs(container, 40)}")
            reason = give_up(self, container) if give_up else None
            if reason:
                return ProbeResult(False, f"{kind} of {container} given up: {reason}")
            result = self.probe_once(container, probe)
            if result.ok:
                successes, failures = successes + 1, 0
                if successes >= successes_needed:
                    return result
            else:
                successes, failures = 0, failures + 1
                if failures >= failures_allowed:
                    waited = time.monotonic() - since
                    return ProbeResult(
                        False,
                        f"{kind} of {container} failed {failures}x in {waited:.0f} s; last: "
                        f"{result.detail}\n{self.logs(container, 40)}",
                    )

    def await_ready(self, give_up: GiveUp | None = None) -> dict[str, list[str]]:
        """Each container's startupProbe, then its readinessProbe, all containers at once
        (each from its own start). {container: failures}; empty lists when all passed.
        ``give_up(pod, container)``: a reason to stop waiting early (the kubelet never
        does; a test may, once the outcome is certain), or None."""
        failures: dict[str, list[str]] = {}

        def one(name: str) -> None:
            failures[name] = []
            for kind in ("startupProbe", "readinessProbe"):
                result = self.await_probe(name, kind, self.started[name], give_up)
                if not result.ok:
                    failures[name].append(result.detail)
                    return

        threads = [threading.Thread(target=one, args=(n,)) for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return failures

    # -- stopping, as the kubelet stops a pod that is deleted

    def terminate(self, before_term: Callable[[str], None] | None = None) -> dict[str, Stopped]:
        """The kubelet's pod deletion: for every container at once, its preStop hook (exec,
        as written), then SIGTERM, then SIGKILL if it still runs when the grace period
        (counted from the start, preStop included) is over. ``before_term(container)`` is
        called in that container's thread just before its SIGTERM."""
        grace = self.pod.grace_seconds
        t0 = time.monotonic()
        stopped: dict[str, Stopped] = {}

        def one(name: str) -> None:
            hook = self.pod.container(name).get("lifecycle", {}).get("preStop")
            pre_stop = None
            if hook is not None:
                if "exec" in hook:
                    pre_stop = self.exec(name, hook["exec"]["command"], timeout=grace)
                elif "sleep" in hook:
                    time.sleep(min(grace, float(hook["sleep"]["seconds"])))
                    pre_stop = ProbeResult(True, "slept")
                else:
                    pre_stop = self.probe_once(name, {**hook, "timeoutSeconds": grace})
            if before_term is not None:
                before_term(name)
            # After a preStop that used up the grace period the kubelet still gives 2 s.
            left = max(2.0, grace - (time.monotonic() - t0))
            docker("kill", "--signal", "TERM", self.names[name], check=False)
            killed = False
            try:
                done = subprocess.run(
                    [DOCKER, "wait", self.names[name]],
                    capture_output=True,
                    text=True,
                    timeout=left,
                )
                code = int(done.stdout.strip()) if done.stdout.strip() else None
            except subprocess.TimeoutExpired:
                killed = True
                docker("kill", "--signal", "KILL", self.names[name], check=False)
                code = self.inspect(name)["State"]["ExitCode"]
            stopped[name] = Stopped(pre_stop, code, time.monotonic() - t0, killed)

        threads = [threading.Thread(target=one, args=(n,)) for n in self.names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return stopped
