#!/usr/bin/env bash
# One command for a session that is lent a GPU (device time is short: this is sized for < 8 min).
#   bash benchmarks/gpu_session.sh        # from the repository root, on the GPU machine
# 1. tests/kernels/gpu_check.py: every GPU kernel (numba-cuda and CUDA C) against the float64 reference on
#    the device, and Glow / kernel-flow training steps on CuPy vs NumPy (≤ 1e-12 / 1e-11 relative);
# 2. benchmarks/gpu_suite.py: the coupling timings and issue 5's GPU targets (≤ 270 s).
# Logs and gpu_suite.json go to $OUT (or ./gpu-session-<date>/); commit them under benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-session-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/device.txt" 2>&1
timeout 200 python tests/kernels/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
check=${PIPESTATUS[0]}
timeout 300 python benchmarks/gpu_suite.py --json "$out/gpu_suite.json" 2>&1 | tee "$out/gpu_suite.log"
suite=${PIPESTATUS[0]}
echo "gpu_session: gpu_check exit $check, gpu_suite exit $suite; files in $out"
[ "$check" -eq 0 ] && [ "$suite" -eq 0 ]
