#!/usr/bin/env bash
# The GPU checks of issue #12, in one run of under 5 minutes on one GPU (H200-class):
# the CUDA tests, the training-loop modes, the per-call costs and a 200 000-step soak.
# Usage (on a machine with a CUDA GPU): bash benchmarks/gpu_check.sh [OUTPUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
python - <<'PY' | tee "$out/env.txt"
import torch, steplog, platform
print(f"steplog {steplog.__version__} · torch {torch.__version__} · Python {platform.python_version()}")
print(f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
PY
python -m pytest -q -p no:cacheprovider tests/test_arrays.py 2>&1 | tail -5 | tee "$out/tests.txt"
timeout 150 python benchmarks/gpu_loop.py --steps 300 --reps 5 2>&1 | tee "$out/loop.txt"
timeout 40 python benchmarks/gpu_loop.py --micro 2>&1 | tee "$out/micro.txt"
timeout 90 python benchmarks/gpu_loop.py --soak 200000 2>&1 | tee "$out/soak.txt"
# Issue #16: system metrics read the real GPU through NVML (needs steplog[gpu]).
python - <<'PY' 2>&1 | tee "$out/system_metrics.txt"
import time, steplog, torch
b = steplog.JsonlBackend("gpu-check-runs")
t = steplog.Tracker(b, system_metrics=0.2)
t.init()
x = torch.randn(4096, 4096, device="cuda")
end = time.monotonic() + 1.0
while time.monotonic() < end:
    x = x @ x.T / 4096
    t.log({"loss": x.mean()})
t.finish()
data = steplog.read_run(b.path).system[-1].data
print(data)
assert "gpu0.util_percent" in data and "gpu0.mem_mb" in data, "no GPU metrics recorded"
PY
