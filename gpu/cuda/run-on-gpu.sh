#!/usr/bin/env bash
# The GPU checks, on a machine with a GPU and no Go toolchain: it runs what
# 'make gpu-bundle' built (carry bin/gpu along) from the repository's root.
#   1. the conformance suite and the training tests of gpu/executor on GPU 0
#      (every op against the CPU, fresh random inputs, outputs poisoned;
#      MLP and CNN training against the CPU), next to the host device;
#   2. MNIST end to end: the MLP (2 epochs) and the CNN (1 epoch) on the
#      GPU and on this machine's CPU, test accuracy side by side;
#   3. the benchmark against PyTorch eager on the same card, FP32 and bf16.
# cuBLAS and NVRTC are found in the CUDA toolkit or in the Python wheels
# (nvidia-cublas, nvidia-cuda-nvrtc) that PyTorch brings.
set -uo pipefail
B=${1:-bin/gpu}
T=$(mktemp -d)
for f in gotrain-gpu executor.test; do gunzip -c "$B/$f.gz" >"$T/$f" && chmod +x "$T/$f"; done
dirs=(/usr/local/cuda/lib64)
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  for f in "$sp"/nvidia/*/lib/libcublas.so.* "$sp"/nvidia/*/lib/libnvrtc.so.* "$sp"/nvidia/cu*/lib/libcublas.so.* "$sp"/nvidia/cu*/lib/libnvrtc.so.*; do
    [ -e "$f" ] && dirs+=("$(dirname "$f")")
  done
done
LD_LIBRARY_PATH=$(printf '%s:' "${dirs[@]}")${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH
nvidia-smi -L || true
"$T/gotrain-gpu" devices
echo "== conformance and training tests on the GPU"
"$T/executor.test" -test.v -test.count=1 2>&1 | grep -E '^(---|ok|FAIL|PASS|panic)|Error|cuda' | grep -v '^=== RUN' | tail -80
echo "== MNIST end to end (test accuracy)"
for m in "mlp 2" "cnn 1"; do
  set -- $m
  for d in gpu cpu; do
    acc=$("$T/gotrain-gpu" train --model "$1" --epochs "$2" --dataset mnist --data-dir "$B/mnist" --device "$d" 2>/dev/null | grep -o 'test accuracy [0-9.]*%')
    echo "$1 $2 epoch(s) --device $d: $acc"
  done
done
echo "== benchmark against PyTorch"
python3 cmd/gotrain/peer/compare_gpu.py "$T/gotrain-gpu" --repeats "${REPEATS:-5}" --peak-tflops "${PEAK_TFLOPS:-67}"
echo "== bf16 against PyTorch's autocast"
python3 cmd/gotrain/peer/compare_gpu.py "$T/gotrain-gpu" --repeats "${REPEATS:-3}" --precision bf16 --peak-tflops "${PEAK_BF16_TFLOPS:-989}"
