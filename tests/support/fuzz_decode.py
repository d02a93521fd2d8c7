"""Coverage-guided fuzzing of ``decode_image`` with atheris (libFuzzer for Python).

Every input must either decode or be refused with one of the typed 4xx errors
(``ColorizerError`` with a 4xx status); anything else -- a plain ``OSError`` from Pillow,
a crash, or an input that takes longer than libFuzzer's ``-timeout`` -- is a finding:
libFuzzer stops, writes the input as ``crash-*``/``timeout-*`` and exits non-zero.

    python -m tests.support.fuzz_decode CORPUS_DIR [SEED_DIR] -max_total_time=600 -timeout=2

(``make fuzz`` runs it for ``FUZZ_SECONDS``.) The seed corpus, one small file per accepted
format and variant, is tests/data/fuzz_seeds/ (made by tests/support/fuzz_seeds.py).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["PIL", "serving"]):
    from PIL import Image

    from serving.runtime.errors import ColorizerError
    from serving.runtime.imageio import decode_image

    Image.init()  # import every format plugin now, inside the instrumented block

# Keep each case small enough to run thousands per second; the 40 MP production cap is
# tested on its own (the header check refuses before decoding).
MAX_PIXELS = 4_000_000


def test_one_input(data: bytes) -> None:
    try:
        decode_image(data, max_pixels=MAX_PIXELS)
    except ColorizerError as exc:
        if not 400 <= exc.http_status < 500:
            raise


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
