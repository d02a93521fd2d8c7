"""`colorizer archive`: what goes into colorizer.mar, and that it is self-contained."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import yaml

from serving.cli import main as cli
from serving.launcher.archive import (
    build_archive,
    job_queue_size,
    model_config,
    runtime_files,
    with_queue,
    with_settings,
)

RUNTIME_MODULES = {
    "colorspace",
    "constants",
    "device",
    "errors",
    "imageio",
    "forms",
    "request_meta",
    "model_spec",
    "nvjpeg",
    "pipeline",
    "precision",
    "service",
}


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def mar(model, tmp_path_factory):
    return build_archive(model, tmp_path_factory.mktemp("store"))


def test_the_archive_ships_the_whole_runtime_package_and_nothing_else_of_serving():
    shipped = {p.relative_to(p.parents[1]).as_posix() for p in runtime_files()}
    assert shipped == {"serving/__init__.py"} | {f"runtime/{m}.py" for m in RUNTIME_MODULES} | {
        "runtime/__init__.py"
    }


def test_archive_holds_model_handler_code_and_configs(mar):
    assert mar.name == "colorizer.mar"
    with zipfile.ZipFile(mar) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
        config = yaml.safe_load(zf.read("model-config.yaml"))
        metrics = yaml.safe_load(zf.read("metrics.yaml"))
    assert {f"serving/runtime/{name}.py" for name in RUNTIME_MODULES} <= names
    assert not {n for n in names if n.startswith(("training/", "tests/"))}
    assert not {n for n in names if n.startswith(("serving/client", "serving/launcher"))}
    assert manifest["modelName"] == "colorizer"
    assert manifest["handler"] == "colorizer_handler.py" and "colorizer_handler.py" in names
    assert manifest["serializedFile"] in names and manifest["configFile"] == "model-config.yaml"
    assert config["batchSize"] >= 1 and config["minWorkers"] == config["maxWorkers"] >= 1
    assert {"precision", "threads", "max_pixels"} <= set(config["handler"])
    declared = {m["name"] for kind in metrics["model_metrics"].values() for m in kind}
    assert {"colorizer_stage_seconds", "colorizer_errors_total"} <= declared


def test_gpu_profile_batches_more(model, tmp_path):
    mar = build_archive(model, tmp_path, profile="gpu")
    with zipfile.ZipFile(mar) as zf:
        gpu = yaml.safe_load(zf.read("model-config.yaml"))
    assert gpu["batchSize"] > 4


def test_handler_imports_from_the_unpacked_archive_alone(mar, tmp_path):
    """As a stock TorchServe would: only the archive's folder, plus torch/pillow/ts."""
    with zipfile.ZipFile(mar) as zf:
        zf.extractall(tmp_path)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import colorizer_handler, serving;"
        "print(serving.__file__); print('training' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    serving_file, training_loaded = done.stdout.split()
    assert serving_file.startswith(str(tmp_path)) and training_loaded == "False"


def test_refuses_what_is_not_an_exported_model(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_bytes(b"not a torchscript file")
    with pytest.raises(ValueError, match="colorizer export"):
        build_archive(fake, tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        build_archive(tmp_path / "missing.pt", tmp_path / "out")


def test_unknown_profile_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="profile"):
        build_archive(model, tmp_path, profile="tpu")


def test_archive_command(model, tmp_path, capsys):
    assert cli(["archive", "--model", str(model), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "colorizer.mar").is_file()
    assert "colorizer.mar" in capsys.readouterr().out


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_the_job_queue_holds_the_profiles_deadline_of_work(profile):
    queue = model_config(profile)["queue"]
    config = with_queue(model_config(profile))
    assert config["jobQueueSize"] == int(queue["deadline_s"] * queue["photos_per_s"])
    assert "clientTimeoutInMills" not in config  # off: it drops jobs without an answer


def test_the_queue_size_is_deadline_times_rate_and_at_least_one():
    assert job_queue_size(10, 10) == 100 and job_queue_size(2.5, 7) == 17
    assert job_queue_size(0.01, 1) == 1
    for bad in ((0, 10), (10, 0), (-1, 5)):
        with pytest.raises(ValueError, match="must be > 0"):
            job_queue_size(*bad)


def test_the_archive_command_sizes_the_queue_for_another_deadline(model, tmp_path, capsys):
    argv = ["archive", "--model", str(model), "--out", str(tmp_path), "--queue-deadline-s", "3"]
    assert cli(argv) == 0
    with zipfile.ZipFile(tmp_path / "colorizer.mar") as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    rate = model_config("cpu")["queue"]["photos_per_s"]
    assert config["jobQueueSize"] == int(3 * rate) and config["queue"]["deadline_s"] == 3
    assert f"jobQueueSize {int(3 * rate)}: 3 s at" in capsys.readouterr().out


def test_profile_settings_can_be_overridden_one_key_at_a_time(model, tmp_path, capsys):
    """`colorizer archive --set KEY=VALUE`: what a profile comparison varies, written into
    the archive's model-config.yaml; the rest of the profile is kept."""
    argv = ["archive", "--model", str(model), "--out", str(tmp_path)]
    argv += ["--set", "minWorkers=1", "--set", "maxWorkers=1", "--set", "handler.threads=2"]
    assert cli(argv) == 0
    with zipfile.ZipFile(tmp_path / "colorizer.mar") as zf:
        config = yaml.safe_load(zf.read("model-config.yaml"))
    cpu = model_config("cpu")
    assert (config["minWorkers"], config["maxWorkers"], config["handler"]["threads"]) == (1, 1, 2)
    assert config["handler"]["precision"] == cpu["handler"]["precision"]
    assert config["batchSize"] == cpu["batchSize"]
    assert model_config("cpu") == cpu  # the profile itself is untouched


@pytest.mark.parametrize("setting", ["workers=2", "handler.colour=red", "minWorkers", "handler=1"])
def test_an_unknown_profile_setting_is_refused_with_the_accepted_keys(setting):
    with pytest.raises(ValueError, match=r"KEY=VALUE with KEY one of .*handler\.threads"):
        with_settings(model_config("cpu"), [setting])
