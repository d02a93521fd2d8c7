"""`colorizer pipeline-bench`: against a baseline file both run, the ratios and the network's
achieved GFLOP/s are printed and written (no timing is asserted); ``--write-doc`` keeps one
section per machine in a Markdown file; and serving/BENCHMARKS.md names the machine of every
table it holds."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

import pytest

from serving.benchmark import (
    DOC_BEGIN,
    DOC_END,
    STAGES,
    Machine,
    command_line,
    cpu_model,
    has_amx,
    network_flops,
    replace_section,
    served_over_in_process,
    slug,
    this_machine,
    times_faster,
)
from serving.cli import main
from tests.support.paths import REPO

BENCHMARKS = REPO / "serving" / "BENCHMARKS.md"
# A heading that names a machine: "Machine:" then a vendor's name, or "not recorded".
MACHINE_HEADING = re.compile(r"^#{2,6} Machine: .*\b(AMD|Intel|NVIDIA|Arm|Apple|not recorded)\b")


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
    for stage, ratio in size["baseline_over_new"].items():
        assert ratio == pytest.approx(base["ms"][stage] / new["ms"][stage])
    flops = network_flops(tiny_model, "cpu")
    assert flops > 0 and new["network_gflop"] == base["network_gflop"] == flops / 1e9


def test_write_doc_puts_the_run_in_this_machines_section(tiny_model, tmp_path, monkeypatch):
    """The section lands between this machine's markers, after the sections already there,
    with its heading (machine, torch version), the exact command, and one table row per run;
    the rest of the file is untouched."""
    import torch

    doc = tmp_path / "BENCH.md"
    before = "# Bench\n\n<!-- bench:BEGIN other -->\nold\n<!-- bench:END other -->\n\n## History\n"
    doc.write_text(before)
    argv = ["pipeline-bench", "--model", str(tiny_model), "--device", "cpu", "--sizes", "0.05"]
    argv += ["--repeats", "1", "--parallel", "0", "--reference-max-mp", "0.1"]
    argv += ["--write-doc", str(doc)]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/colorizer", *argv])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(argv) == 0
    machine = this_machine("cpu")
    text = doc.read_text()
    begin, end = DOC_BEGIN.format(key=machine.key), DOC_END.format(key=machine.key)
    head, rest = text.split(begin + "\n")
    section, tail = rest.split(end)
    assert head == before.split("\n## History")[0] + "\n" and tail == "\n\n## History\n"
    assert section.startswith(f"### Machine: {machine.title}; torch {torch.__version__}; ")
    assert f"Command: `OMP_NUM_THREADS=1 {shlex.join(['colorizer', *argv])}`" in section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[1] for row in rows[2:]] == ["new", "reference", "ref / new"]


DOC = (
    "# Results\n\nSections sit between `<!-- bench:BEGIN amd-x -->` and\n"
    "`<!-- bench:END amd-x -->` lines; a mention is not a marker.\n\n"
    "<!-- bench:BEGIN amd-x -->\n### Machine: AMD X\nold table\n<!-- bench:END amd-x -->\n\n"
    "<!-- bench:BEGIN intel-y -->\n### Machine: Intel Y\n<!-- bench:END intel-y -->\n\n"
    "## History (not regenerated)\n\n| a |\n| --- |\n"
)


def test_a_machines_section_is_replaced_in_place_and_the_rest_kept():
    old, new = "### Machine: AMD X\nold table\n", "### Machine: AMD X\nnew, longer table\n"
    got = replace_section(DOC, "amd-x", new)
    start = DOC.index(old)
    assert got == DOC[:start] + new + DOC[start + len(old) :]


def test_a_new_machines_section_follows_the_last_one_and_the_rest_is_kept():
    got = replace_section(DOC, "nvidia-z", "### Machine: NVIDIA Z\n")
    block = "\n<!-- bench:BEGIN nvidia-z -->\n### Machine: NVIDIA Z\n<!-- bench:END nvidia-z -->\n"
    cut = DOC.index("<!-- bench:END intel-y -->\n") + len("<!-- bench:END intel-y -->\n")
    assert got == DOC[:cut] + block + DOC[cut:]
    assert replace_section(got, "nvidia-z", "### Machine: NVIDIA Z\n") == got  # idempotent


def test_without_sections_the_first_goes_at_the_end():
    assert replace_section("", "k", "s\n") == "<!-- bench:BEGIN k -->\ns\n<!-- bench:END k -->\n"
    assert replace_section("# T\n", "k", "s").startswith("# T\n\n<!-- bench:BEGIN k -->\ns\n")


@pytest.mark.parametrize(
    "document",
    [
        "<!-- bench:BEGIN k -->\nno end\n",
        "<!-- bench:END k -->\n<!-- bench:BEGIN k -->\n",
        "<!-- bench:BEGIN k -->\n<!-- bench:END k -->\n<!-- bench:BEGIN k -->\n",
    ],
)
def test_unpaired_markers_are_refused_with_what_is_accepted(document):
    with pytest.raises(ValueError, match="expected one .* followed by one"):
        replace_section(document, "k", "s")


def test_the_machine_comes_from_cpuinfo():
    cpuinfo = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu "
    assert cpu_model(cpuinfo + "amx_bf16 amx_tile\n") == "Intel(R) Xeon(R) Platinum 8480+"
    assert has_amx(cpuinfo + "amx_bf16 amx_tile\n") and not has_amx(cpuinfo + "avx512_bf16\n")
    assert cpu_model("") == "unknown CPU" and not has_amx("")
    machine = Machine("AMD EPYC", 2, False)
    assert (machine.title, machine.key) == ("AMD EPYC, 2 cores, no AMX", "amd-epyc-2-cores-no-amx")
    gpu = Machine("AMD EPYC", 16, False, "NVIDIA H200")
    assert gpu.key == "nvidia-h200-host-amd-epyc-16-cores-no-amx"


def test_the_command_line_is_the_one_typed():
    argv = ["/x/.venv/bin/colorizer", "pipeline-bench", "--sizes", ""]
    assert command_line(argv, {}, None) == "colorizer pipeline-bench --sizes ''"
    assert command_line(argv, {"OMP_NUM_THREADS": "1", "HOME": "/h"}, None).startswith(
        "OMP_NUM_THREADS=1 colorizer "
    )
    module = ["/x/serving/benchmark.py", "--sizes", "1"]
    assert command_line(module, {}, "serving.benchmark") == "python -m serving.benchmark --sizes 1"


def tables_with_headings(text: str) -> list[tuple[int, str]]:
    """(line number, nearest heading above) of each Markdown table in ``text``, outside code
    fences ("#9" starting a line of prose is no heading)."""
    found, heading, fenced, previous = [], "", False, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            heading = line
        elif not fenced and line.startswith("|") and not previous.startswith("|"):
            found.append((number, heading))
        previous = line
    return found


def test_every_table_in_benchmarks_md_sits_under_a_heading_naming_its_machine():
    text = BENCHMARKS.read_text()
    tables = tables_with_headings(text)
    assert len(tables) >= 5  # the generated section's, and the history's four
    unnamed = [(n, h) for n, h in tables if not MACHINE_HEADING.match(h)]
    assert unnamed == [], "tables whose heading does not name a machine"


def test_benchmarks_md_holds_generated_sections_keyed_by_their_heading():
    text = BENCHMARKS.read_text()
    keys = re.findall(r"<!-- bench:BEGIN (\S+) -->\n### Machine: ([^;\n]+);", text)
    assert keys, "no generated section (colorizer pipeline-bench --write-doc)"
    assert all(key == slug(title) for key, title in keys)
    assert text.index("<!-- bench:END") < text.index("## History (not regenerated)")


def test_server_cpu_time_is_counted_per_role_front_included(tmp_path):
    """The processes `colorizer serve` records: TorchServe's launcher and what it spawns
    (a worker by its command line), and each front process with its children, each
    counted under its role; a run's CPU time is split by role and per image."""
    import subprocess
    import time

    import psutil

    from serving.benchmark import ROLES, cpu_by_role, dedicated_cores_img_s, server_cpu_seconds

    spin = "import time\nwhile time.process_time() < 0.4: pass\ntime.sleep(30)"
    # The launcher's own command line must not name the worker: it spells the name in parts.
    spawn = "import os, subprocess, sys; subprocess.run([sys.executable, '-c', os.environ['SPIN'], 'model_' + 'service_worker'])"  # noqa: E501
    launcher = subprocess.Popen([sys.executable, "-c", spawn], env={**os.environ, "SPIN": spin})
    front = subprocess.Popen([sys.executable, "-c", spin])
    try:
        state = {
            "launcher_pid": launcher.pid,
            "front": [{"name": "front-grpc", "pid": front.pid, "started": 0.0}],
        }
        (tmp_path / "server.json").write_text(json.dumps(state))
        before: dict = {}
        deadline = time.time() + 20
        while time.time() < deadline:  # until the worker is spawned and both have spun
            after = server_cpu_seconds(tmp_path)
            spent = cpu_by_role(before, after)
            if min(spent["worker"], spent["front-grpc"]) >= 0.3:
                break
            time.sleep(0.1)
        assert sorted(role for role, _ in after.values()) == ["front-grpc", "torchserve", "worker"]
        assert set(spent) == set(ROLES)
        assert spent["worker"] >= 0.3 and spent["front-grpc"] >= 0.3
        assert spent["front-http"] == 0.0
        per_img, img_s = dedicated_cores_img_s(before, after, images=2)
        assert per_img == pytest.approx(sum(spent.values()) / 2)
        assert img_s <= 2 / spent["worker"]  # never faster than its busiest worker allows
    finally:
        for proc in (launcher, front):
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()


def test_the_goal_ratios_read_above_one_when_the_new_file_is_faster():
    """Issue #33's goals as pipeline-bench computes them: baseline ms over new ms (3x: the
    new request takes a third of the time), and served img/s over the mean in-process
    img/s before and after the served runs."""
    new = {stage: 1.0 for stage in STAGES} | {"whole": 40.0}
    old = {stage: 2.0 for stage in STAGES} | {"whole": 130.0}
    ratios = times_faster(new, old)
    assert ratios["whole"] == pytest.approx(3.25) and ratios["whole"] >= 3
    assert all(ratios[stage] == 2.0 for stage in STAGES)
    assert served_over_in_process(45.0, 50.0) == pytest.approx(0.9)
