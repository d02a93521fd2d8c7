"""Bad photos are typed 4xx refusals, never 500: a bounded fuzz run plus the inputs it found.

The fuzzer (tests/support/fuzz_decode.py, atheris) mutates the seed corpus in
tests/data/fuzz_seeds/ (every accepted format) and fails on any untyped exception or any
input slower than 2 s. CI runs it for FUZZ_CI_SECONDS; `make fuzz` runs it for longer.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from serving.runtime.errors import ColorizerError, CorruptImage
from serving.runtime.imageio import decode_image
from tests.support.paths import DATA, REPO

SEEDS = DATA / "fuzz_seeds"
FINDINGS = DATA / "fuzz_findings"
FUZZ_CI_SECONDS = 45
REFUSAL_LIMIT_S = 2


def test_seed_corpus_covers_every_accepted_format():
    formats = set()
    for seed in SEEDS.iterdir():
        formats.add(decode_image(seed.read_bytes()).source_format)
    assert formats == {"JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP"}


@pytest.mark.parametrize("finding", sorted(FINDINGS.iterdir()), ids=lambda p: p.name)
def test_what_the_fuzzer_found_is_refused_as_corrupt(finding):
    """Inputs that once escaped as a plain OSError (-> 500) before decode errors were typed."""
    with pytest.raises(CorruptImage) as refused:
        decode_image(finding.read_bytes())
    assert refused.value.http_status == 400
    assert "corrupt" in str(refused.value)


@pytest.mark.parametrize(
    "data",
    [
        b"BM" + b"\x00" * 12 + b"\x07\x00\x00\x00" + b"\x00" * 40,  # BMP: unknown header size
        b"II*\x00\x08\x00\x00\x00\x01\x00\x00\x01\x03\x00\x01\x00\x00\x00\xff\xff",  # cut TIFF
    ],
    ids=["bmp-header", "tiff-ifd"],
)
def test_broken_headers_of_accepted_formats_are_typed(data):
    with pytest.raises(ColorizerError) as refused:
        decode_image(data)
    assert 400 <= refused.value.http_status < 500


@pytest.mark.slow
def test_bounded_fuzz_run_finds_no_untyped_error_and_no_slow_refusal(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "tests.support.fuzz_decode",
        str(corpus),
        str(SEEDS),
        f"-max_total_time={FUZZ_CI_SECONDS}",
        f"-timeout={REFUSAL_LIMIT_S}",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={tmp_path}/",
    ]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=FUZZ_CI_SECONDS + 120,
    )
    log = done.stdout + done.stderr
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", log)
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash", "timeout")))
    print(f"fuzz: {runs[1] if runs else '?'} cases in {FUZZ_CI_SECONDS} s, findings {findings}")
    assert done.returncode == 0 and not findings, log[-4000:]
    assert runs and int(runs[1]) > 1000, log[-2000:]
