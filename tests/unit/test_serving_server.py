"""`colorizer serve/stop` without Java: the run's config, port checks, clear refusals."""

from __future__ import annotations

import socket

import pytest

from serving.cli import main as cli
from serving.launcher.server import (
    CONFIG_TEMPLATE,
    METRICS_CONFIG,
    Ports,
    ServeError,
    check_ports_free,
    config_overrides,
    render_config,
    start,
    stop,
)
from tests.support.net import free_ports


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_repo_config_is_safe_and_fits_12_megapixels():
    props = properties(CONFIG_TEMPLATE.read_text())
    assert props["metrics_mode"] == "prometheus"
    assert props["disable_token_authorization"] == "true"
    assert props["enable_model_api"] == "false"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["grpc_management_address"] == "127.0.0.1"
    twelve_mp_png = 4000 * 3000 * 4  # worst case: uncompressed RGBA
    assert int(props["max_request_size"]) >= twelve_mp_png
    assert int(props["max_response_size"]) >= twelve_mp_png


def test_run_config_keeps_torchserve_on_loopback_behind_the_front(tmp_path):
    ports = Ports(1, 2, 3, 4, 5, backend_http=6, backend_grpc=7, backend_metrics=8)
    text = render_config(CONFIG_TEMPLATE.read_text(), config_overrides(ports, tmp_path))
    props = properties(text)
    assert props["inference_address"] == "http://127.0.0.1:6"
    assert props["grpc_inference_address"] == "127.0.0.1" and props["grpc_inference_port"] == "7"
    assert props["metrics_address"] == "http://127.0.0.1:8"
    assert props["management_address"] == "http://127.0.0.1:4"
    assert props["grpc_management_address"] == "127.0.0.1"
    assert props["grpc_management_port"] == "5"
    assert props["model_store"] == str(tmp_path.resolve())
    assert props["allowed_urls"] == f"file://{tmp_path.resolve()}/.*"
    assert props["metrics_config"] == str(METRICS_CONFIG) and METRICS_CONFIG.is_file()
    assert props["metrics_mode"] == "prometheus"  # untouched keys stay
    assert [line.split("=")[0] for line in text.splitlines()].count("inference_address") == 1


def test_render_config_appends_missing_keys_and_keeps_comments():
    text = render_config("# a=1\na=2\n", {"a": "3", "b": "4"})
    assert text == "# a=1\na=3\nb=4\n"


def test_a_port_in_use_is_named():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = free_ports(8)
        with pytest.raises(ServeError, match=f"grpc port {port}"):
            check_ports_free("127.0.0.1", Ports(others[0], port, *others[1:]))
        with pytest.raises(ServeError, match=f"backend_grpc port {port}"):
            check_ports_free("127.0.0.1", Ports(*others[:6], backend_grpc=port))


def test_serve_without_default_weights_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ServeError, match="model_store/default/colorizer.pt"):
        start(state_dir=tmp_path / "state")
    assert cli(["serve", "--state-dir", str(tmp_path / "state")]) == 1
    assert "colorizer archive" in capsys.readouterr().err


def test_serve_needs_an_archive_in_the_store(tmp_path):
    with pytest.raises(ServeError, match="has no colorizer.mar"):
        start(tmp_path, state_dir=tmp_path / "state")


def test_stop_without_a_server_is_a_no_op(tmp_path, capsys):
    assert stop(tmp_path) is False
    assert cli(["stop", "--state-dir", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_a_new_run_clears_only_its_own_files_from_the_state_folder(tmp_path):
    from serving.launcher.server import _clear_run_files

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "ts_log.log").write_text("old run")
    (tmp_path / "config.properties").write_text("old=1")
    (tmp_path / "front").mkdir()
    (tmp_path / "front" / "nginx.conf").write_text("old run")
    (tmp_path / "front-http.log").write_text("old run")
    (tmp_path / "notes.txt").write_text("the user's, not ours")
    _clear_run_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
