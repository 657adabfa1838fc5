#!/usr/bin/env bash
# The GPU checks, on a machine with a GPU and no Go toolchain: it runs what
# 'make gpu-bundle' built (carry bin/gpu along) from the repository's root,
# in phases, most important first:
#   tests   the conformance suite and the training tests of gpu/executor on
#           GPU 0 (every op against the CPU, fresh random inputs, outputs
#           poisoned; MLP and CNN training against the CPU), next to the
#           host device and the host running the kernels over a GPU's grid;
#   nccl    the real NCCL (NCCL_LIBRARY, else the libnccl.so.2 of PyTorch's
#           wheels) under gotrain's wrapper on GPU 0: the nccl package's
#           TestRealNCCLOnGPU, a one-rank communicator (NCCL refuses two
#           ranks on one GPU) staging host buffers through the GPU;
#   bench   the benchmark against PyTorch eager on the same card, FP32
#           (MLP, CNN and ResNet-20);
#   profile where the time of the benchmark's steps goes, op by op (bench
#           train --profile), for the MLP and the CNN: what to fix first;
#   mnist   MNIST end to end on the GPU: the MLP (2 epochs), the CNN (1);
#   resnet  ResNet-20 (BatchNorm, strided shortcuts): bench train on the GPU
#           and where its steps go, then one MNIST epoch on the GPU and the
#           same epoch on this machine's CPU (the accuracies must agree);
#   syncbn  ResNet-20 on PNG digit folders: 2 steps on the GPU against the
#           CPU, and --sync-batchnorm with 2 and 3 processes sharing the GPU
#           (the cpu backend) against one process, after 2 steps, and
#           ResNet-8 after 20 (weights and running statistics, largest
#           difference);
#   pinned  what page-locked memory and the prefetcher gain: bench train
#           and MNIST training with and without them;
#   bf16    bf16 against PyTorch's autocast on the same card;
#   cpu     the same MNIST runs on this machine's CPU, for the accuracies.
# The whole run keeps within DEADLINE seconds (default 540, under the
# device tool's 600 per call): each phase gets at most what is left, and a
# phase that cannot start in time is skipped and says so. PHASES picks
# phases (default all, in the order above). Logs go to $OUT (the device
# tool brings that folder back), or a temporary folder; the summary,
# printed last, is also $OUT/summary.md.
# cuBLAS and NVRTC are found in the CUDA toolkit or in the Python wheels
# (nvidia-cublas, nvidia-cuda-nvrtc) that PyTorch brings.
set -uo pipefail
B=${1:-bin/gpu}
O=${OUT:-$(mktemp -d)}
DEADLINE=${DEADLINE:-540}
PHASES=${PHASES:-tests resnet syncbn nccl bench profile mnist pinned bf16 cpu}
REPEATS=${REPEATS:-3}
start=$SECONDS
T=$(mktemp -d)
S=$O/summary.md
mkdir -p "$O"
: >"$S"
for f in gotrain-gpu executor.test nccl.test fixture; do gunzip -c "$B/$f.gz" >"$T/$f" && chmod +x "$T/$f"; done
G=$T/gotrain-gpu
dirs=(/usr/local/cuda/lib64)
# python3's site-packages (PyTorch's nvidia-* wheels): cuBLAS and NVRTC for
# LD_LIBRARY_PATH, and the first libnccl.so.2 for NCCL_LIBRARY unless it
# names one already.
for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  for f in "$sp"/nvidia/*/lib/libcublas.so.* "$sp"/nvidia/*/lib/libnvrtc.so.*; do
    [ -e "$f" ] && dirs+=("$(dirname "$f")")
  done
  for f in "$sp"/nvidia/*/lib/libnccl.so.2; do
    [ -e "$f" ] && [ -z "${NCCL_LIBRARY:-}" ] && NCCL_LIBRARY=$f
  done
done
LD_LIBRARY_PATH=$(printf '%s:' "${dirs[@]}")${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH NCCL_LIBRARY

say() { echo "$*" | tee -a "$S"; }

# phase NAME MAX_SECONDS: runs the function of that name under timeout,
# its output into $O/NAME.log, unless PHASES leaves it out or fewer than
# 20 seconds are left.
phase() {
  local name=$1 max=$2 left=$((DEADLINE - (SECONDS - start)))
  case " $PHASES " in *" $name "*) ;; *) return ;; esac
  if [ "$left" -lt 20 ]; then
    say "## $name: skipped, ${left}s left of ${DEADLINE}s (rerun with PHASES=\"$name ...\")"
    return
  fi
  local t0=$SECONDS rc
  echo "== $name (at most $((max < left ? max : left))s)"
  timeout -k 5 $((max < left ? max : left)) bash -c "$(declare -f "run_$name" say); S=$S; run_$name" >"$O/$name.log" 2>&1
  rc=$?
  local st=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && st="TIMED OUT"
  [ $rc -ne 0 ] && [ "$st" = ok ] && st="FAILED (exit $rc)"
  say "## $name: $st in $((SECONDS - t0))s (log: $name.log)"
  "summary_$name" "$O/$name.log" | tee -a "$S"
  [ "$st" = ok ] || tail -4 "$O/$name.log" | sed 's/^/    /' | tee -a "$S"
  say ""
}

export G T B O REPEATS

run_tests() { "$T/executor.test" -test.v -test.count=1; }
summary_tests() {
  echo "passed $(grep -c -- '--- PASS' "$1"), failed $(grep -c -- '--- FAIL' "$1"), skipped $(grep -c -- '--- SKIP' "$1"); on the GPU: $(grep -c -- '--- PASS: .*/cuda' "$1") passed"
  grep -E -- '--- (FAIL|SKIP)|^panic|Error:' "$1" | head -20
}

run_bench() { python3 cmd/gotrain/peer/compare_gpu.py "$G" --repeats "$REPEATS" --peak-tflops "${PEAK_TFLOPS:-67}"; }
summary_bench() { grep -E '^(\||median)' "$1"; }

# first LINE_PATTERN OUTPUT EXIT_STATUS: the last line of OUTPUT that
# matches, else what went wrong.
first() {
  local got
  got=$(grep -E -o "$1" <<<"$2" | tail -1)
  [ -n "$got" ] && echo "$got" || echo "FAILED (exit $3): $(tail -2 <<<"$2" | tr '\n' ' ' | cut -c1-240)"
}
run_profile() {
  for m in "mlp --hidden 4096,4096,4096,4096" "cnn"; do
    echo "== $m, batch 512"
    # shellcheck disable=SC2086
    "$G" bench train --device gpu --model $m --batch-size 512 --optimizer adam --steps 20 --warmup 5 --profile 2>&1 >/dev/null
  done
}
summary_profile() { awk '/^== /{print; n=0; next} /share/{next} /^ *[0-9.]+%/{ if (n++ < 8) print }' "$1"; }

mnist() { # MODEL EPOCHS DEVICE [FLAGS...]
  local m=$1 e=$2 d=$3 out
  shift 3
  out=$("$G" train --model "$m" --epochs "$e" --dataset mnist --data-dir "$B/mnist" --device "$d" "$@" 2>&1)
  echo "$m $e epoch(s) --device $d $*: $(first '^test accuracy.*' "$out" $?)"
}
export -f mnist first
run_mnist() { mnist mlp 2 gpu; mnist cnn 1 gpu; }
summary_mnist() { grep -E 'epoch' "$1"; }

RESNET_FLAGS="--depth 20 --batch-size 128 --optimizer sgd --momentum 0.9 --lr 0.1 --weight-decay 5e-4"
export RESNET_FLAGS
run_resnet() {
  for b in 128 512; do
    out=$("$G" bench train --device gpu --model resnet --depth 20 --batch-size $b --optimizer sgd --steps 50 --warmup 5 2>&1)
    echo "bench ResNet-20 batch $b: $(first '"samples_per_sec":[0-9.]*' "$out" $?)"
  done
  "$G" bench train --device gpu --model resnet --depth 20 --batch-size 128 --optimizer sgd --steps 10 --warmup 3 --profile 2>&1 >/dev/null | head -14
  # shellcheck disable=SC2086
  mnist resnet 1 gpu $RESNET_FLAGS
  # shellcheck disable=SC2086
  mnist resnet 1 cpu $RESNET_FLAGS
}
summary_resnet() { grep -E 'bench|epoch' "$1"; }

# ranks N OUT FLAGS...: N processes of a job on this machine, all on GPU 0
# (LOCAL_RANK 0 each, the cpu backend between them), rank 0 writing OUT.
ranks() {
  local n=$1 out=$2 i pids=() rc=0
  shift 2
  port=$((port + 1))
  for ((i = 0; i < n; i++)); do
    RANK=$i WORLD_SIZE=$n LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      GOTRAIN_JOB_SECRET=gotrain-run-on-gpu-syncbn-secret-0123 \
      "$G" "${rn[@]}" --backend cpu "$@" --out "$out.rank$i" >/dev/null 2>"$out.rank$i.err" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || rc=$?; done
  [ $rc -eq 0 ] && mv "$out.rank0" "$out" || tail -3 "$out.rank0.err"
  return $rc
}
# differ WHAT A B: the largest difference of the weights and running
# statistics of files A and B.
differ() { echo "syncbn: $1: largest difference $("$T/fixture" diff "$2" "$3" 2>&1)"; }
run_syncbn() {
  port=29600
  rn=(train --model resnet --depth 20 --dataset folder --data-dir "$B/digits" --optimizer sgd --lr 0.005)
  local w=$T/syncbn
  mkdir -p "$w"
  "$G" "${rn[@]}" --max-steps 2 --batch-size 8 --device cpu --out "$w/cpu2" >/dev/null 2>"$w/err" || tail -3 "$w/err"
  "$G" "${rn[@]}" --max-steps 2 --batch-size 8 --device gpu --out "$w/gpu2" >/dev/null 2>"$w/err" || tail -3 "$w/err"
  differ "2 steps of batch 8, GPU against CPU" "$w/cpu2" "$w/gpu2"
  ranks 2 "$w/sync2" --max-steps 2 --batch-size 8 --device gpu --sync-batchnorm
  differ "2 steps, 2 processes on the GPU --sync-batchnorm, against 1 CPU process" "$w/cpu2" "$w/sync2"
  differ "2 steps, 2 processes on the GPU --sync-batchnorm, against 1 GPU process" "$w/gpu2" "$w/sync2"
  ranks 2 "$w/nosync2" --max-steps 2 --batch-size 8 --device gpu
  differ "2 steps, 2 processes on the GPU without --sync-batchnorm, against 1 GPU process (must be far)" "$w/gpu2" "$w/nosync2"
  # 20 steps: ResNet-8 (ResNet-20 on these digits turns last bits into
  # 1e-2 within 20 steps, on the CPU too).
  local r8=(--depth 8 --max-steps 20 --batch-size 24)
  "$G" "${rn[@]}" "${r8[@]}" --device gpu --out "$w/gpu20" >/dev/null 2>"$w/err" || tail -3 "$w/err"
  "$G" "${rn[@]}" "${r8[@]}" --device cpu --out "$w/cpu20" >/dev/null 2>"$w/err" || tail -3 "$w/err"
  differ "ResNet-8, 20 steps of batch 24, GPU against CPU" "$w/cpu20" "$w/gpu20"
  for n in 2 3; do
    ranks $n "$w/sync20-$n" "${r8[@]}" --device gpu --sync-batchnorm
    differ "ResNet-8, 20 steps, $n processes on the GPU --sync-batchnorm, against 1 GPU process" "$w/gpu20" "$w/sync20-$n"
  done
}
export -f ranks differ
summary_syncbn() { grep -E '^syncbn' "$1"; }

run_nccl() {
  echo "nccl: NCCL_LIBRARY=${NCCL_LIBRARY:-none}"
  "$T/nccl.test" -test.run 'RealNCCL' -test.v -test.count=1
}
summary_nccl() { grep -E '^nccl|NCCL [0-9]|--- (PASS|FAIL|SKIP)|Error:|Messages:' "$1" | head -12; }

run_pinned() {
  for i in 1 2; do
    for pin in true false; do
      out=$("$G" bench train --device gpu --model mlp --hidden 4096,4096,4096,4096 --batch-size 512 --steps 100 --warmup 10 --pin-memory=$pin 2>&1)
      echo "bench MLP 4x4096 batch 512 --pin-memory=$pin: $(first '"samples_per_sec":[0-9.]*' "$out" $?)"
    done
  done
  for flags in "" "--prefetch=false" "--pin-memory=false"; do
    mnist mlp 1 gpu $flags
  done
}
summary_pinned() { grep -E 'bench|epoch' "$1"; }

run_bf16() { python3 cmd/gotrain/peer/compare_gpu.py "$G" --repeats "$REPEATS" --precision bf16 --peak-tflops "${PEAK_BF16_TFLOPS:-989}"; }
summary_bf16() { grep -E '^(\||median)' "$1"; }

run_cpu() { mnist mlp 2 cpu; mnist cnn 1 cpu; }
summary_cpu() { grep -E 'epoch' "$1"; }

say "# gotrain on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1), $(date -u +%FT%TZ)"
"$G" devices 2>&1 | tee "$O/devices.log" | head -5 | tee -a "$S"
say ""
phase tests 150
phase resnet 150
phase syncbn 90
phase nccl 60
phase bench 170
phase profile 40
phase mnist 60
phase pinned 90
phase bf16 130
phase cpu 120
echo
echo "==== summary (also $S)"
cat "$S"
