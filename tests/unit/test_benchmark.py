"""`colorizer pipeline-bench` against a baseline file: both run, the ratios and the network's
achieved GFLOP/s are printed and written (no timing is asserted)."""

from __future__ import annotations

import json

from serving.benchmark import STAGES, network_flops
from serving.cli import main


def test_pipeline_bench_runs_a_baseline_beside_the_model(tiny_model, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["pipeline-bench", "--model", str(tiny_model), "--baseline-model", str(tiny_model)]
    argv += ["--sizes", "0.05", "--repeats", "1", "--parallel", "0", "--reference-max-mp", "0"]
    assert main([*argv, "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "base/new" in printed and "GFLOP/s" in printed
    (size,) = json.loads(out.read_text())["sizes"]
    new, base = size["runs"]
    assert (new["path"], base["path"]) == ("new", "baseline")
    assert base["dtype"] == "float32" and not base["frozen"]  # the baseline's defaults
    assert set(size["baseline_over_new"]) == {*STAGES, "whole"}
    flops = network_flops(tiny_model, "cpu")
    assert flops > 0 and new["network_gflop"] == base["network_gflop"] == flops / 1e9
