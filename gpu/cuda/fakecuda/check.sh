#!/usr/bin/env bash
# check.sh OUT: the gpu build's own code run without a GPU, against
# fakecuda (see fakecuda.c). It builds the gpu binary and the executor's gpu
# test binary into OUT, the fake driver for them, and then:
#   1. runs the executor's tests: the conformance suite and the training
#      tests on "cuda:0 fakecuda" (every op against graph/'s CPU ops, MLP
#      and CNN training), next to the host devices, and the page-locked
#      memory and streams test; at least 50 subtests must have run on it;
#   2. trains the MLP on MNIST for 300 steps with gotrain-gpu --device gpu,
#      at fp32 and bf16, and the CPU build the same way: the accuracies
#      must agree within 0.5 points (fp32) and 1 point (bf16);
#   2b. trains gorgoniamlp (cmd/examples: a model of Gorgonia's own
#      operators) for 300 steps on cuda:0 fakecuda and on the CPU: the
#      accuracies must agree within 0.5 points; and ResNet-20 (BatchNorm,
#      strided shortcuts) on image folders of MNIST digits: 2 steps from
#      initialisation must end with the CPU's weights and running
#      statistics (within 1e-5), and so must 2 processes on 2 fake GPUs
#      with --sync-batchnorm; and the second epoch of a 2-epoch run
#      (250 steps, batch 16, 4000 digits) resumed on fakecuda from the
#      CPU's checkpoint of the first must end at the CPU's test accuracy
#      within 0.5 points. (From initialisation, a BatchNorm ResNet with
#      small batches turns a last-bit difference into a seed's worth
#      within a few steps, on the CPU alone and in PyTorch too, and two
#      seeds end up to a point apart: so the long run starts from a
#      trained checkpoint, where the runs stay together.)
#   3. runs bench train --device gpu, which must report page-locked memory;
#   4. launches 2 processes on 2 fake GPUs (LOCAL_RANK picks each one's),
#      data parallel and as 2 pipeline stages, over the CPU ring and over
#      NCCL (the stand-in of nccl/testdata/standin, on the fake device
#      memory: gradient buckets reduced on the devices, activations sent
#      device to device): each must end with the accuracy of the CPU
#      build's job on the CPU ring, within 0.5 points;
#   5. bench allreduce --backend nccl --device gpu on 2 fake GPUs: every
#      result checked, none wrong;
#   6. what goes wrong gets said: with no GPU, the gpu binary names
#      cuInit's error and what to do, and the test binary skips saying so;
#      a rank whose LOCAL_RANK has no GPU names both numbers;
#   7. device faults (FAKECUDA_FAULT, see fakecuda.c): an allocation out of
#      memory, a failing launch and a sticky fault, each after the first
#      checkpoint of a run that checkpoints every 5 steps, stop
#      gotrain-gpu train with an error naming the device, the op and the
#      driver's code, exit 1 without a panic or a goroutine dump, and
#      leave the newest checkpoint loadable (gotrain eval --checkpoint).
set -euo pipefail
OUT=${1:-bin/fakecuda}
GO=${GO:-go}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
$GO test -tags gpu -c -o "$OUT/executor.test" ./gpu/executor
$GO build -tags gpu -o "$OUT/gotrain-gpu" ./cmd/gotrain
$GO build -o "$OUT/gotrain-cpu" ./cmd/gotrain
$GO build -tags gpu -o "$OUT/gorgoniamlp-gpu" ./cmd/examples/gorgoniamlp
$GO build -o "$OUT/gorgoniamlp-cpu" ./cmd/examples/gorgoniamlp
$GO build -o "$OUT/fixture" ./gpu/cuda/fakecuda/fixture
bash "$here/build.sh" "$OUT" "$OUT/executor.test" "$OUT/gotrain-gpu" "$OUT/gorgoniamlp-gpu"
export LD_LIBRARY_PATH=$OUT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} GOTRAIN_CUBLAS_LIBRARY=$OUT/libcuda.so.1

(cd gpu/executor && "$OUT/executor.test" -test.count=1 -test.v >"$OUT/executor.log" 2>&1) || {
  grep -E -- '--- FAIL|Error|panic|fakecuda' "$OUT/executor.log" | head -40
  echo "fake-gpu-test: the executor's tests failed on fakecuda (log: $OUT/executor.log)"
  exit 1
}
on=$(grep -c -- '--- PASS: .*/cuda:0_fakecuda' "$OUT/executor.log" || true)
if [ "$on" -lt 50 ]; then
  echo "fake-gpu-test: only $on subtests ran on cuda:0 fakecuda (log: $OUT/executor.log)"
  exit 1
fi
echo "fake-gpu-test: the executor's tests pass, $on subtests of them on cuda:0 fakecuda"

# acc CMD...: the test accuracy CMD prints (rank 0's, from a launch); its
# stderr goes to train.err.
acc() { "$@" 2>"$OUT/train.err" | sed -n 's/^\(\[rank0\] \)\{0,1\}test accuracy \([0-9.]*\)%.*/\2/p'; }
# within A B TOL: |A - B| <= TOL
within() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }
common=(train --model mlp --epochs 1 --max-steps 300 --threads 2)
cpu=$(acc "$OUT/gotrain-cpu" "${common[@]}" --device cpu)
for prec in fp32 bf16; do
  gpu=$(acc "$OUT/gotrain-gpu" "${common[@]}" --device gpu --precision $prec) || true
  if [ -z "$gpu" ]; then
    tail -5 "$OUT/train.err"
    echo "fake-gpu-test: gotrain-gpu train --device gpu --precision $prec failed"
    exit 1
  fi
  tol=0.5
  [ $prec = bf16 ] && tol=1
  echo "fake-gpu-test: MNIST MLP, 300 steps: test accuracy $gpu% on cuda:0 fakecuda at $prec, $cpu% on the CPU"
  within "$gpu" "$cpu" $tol || {
    echo "fake-gpu-test: the accuracies differ by more than $tol points"
    exit 1
  }
done

gm=(train --model gorgoniamlp --dataset mnist --max-steps 300 --optimizer sgd --lr 0.05 --threads 2)
cpu=$(acc "$OUT/gorgoniamlp-cpu" "${gm[@]}" --device cpu)
gpu=$(acc "$OUT/gorgoniamlp-gpu" "${gm[@]}" --device gpu) || true
echo "fake-gpu-test: gorgoniamlp (Gorgonia's operators), 300 steps: test accuracy ${gpu:-none}% on cuda:0 fakecuda, $cpu% on the CPU"
[ -n "$gpu" ] && within "$gpu" "$cpu" 0.5 || {
  tail -5 "$OUT/train.err"
  echo "fake-gpu-test: gorgoniamlp on fakecuda failed or differs from the CPU by more than 0.5 points"
  exit 1
}

rm -rf "$OUT/digits"
"$OUT/fixture" folder -dataset mnist -train 1000 -test 300 "$OUT/digits"
rn=(train --model resnet --depth 20 --dataset folder --data-dir "$OUT/digits" --optimizer sgd --threads 2)
"$OUT/gotrain-cpu" "${rn[@]}" --max-steps 2 --batch-size 8 --lr 0.005 --device cpu --out "$OUT/resnet-cpu.safetensors" >/dev/null 2>"$OUT/train.err"
"$OUT/gotrain-gpu" "${rn[@]}" --max-steps 2 --batch-size 8 --lr 0.005 --device gpu --out "$OUT/resnet-gpu.safetensors" >/dev/null 2>"$OUT/train.err" || {
  tail -5 "$OUT/train.err"
  echo "fake-gpu-test: ResNet-20 on fakecuda failed"
  exit 1
}
# The grids' blocks on one host thread give the same bits as on several.
FAKECUDA_THREADS=1 "$OUT/gotrain-gpu" "${rn[@]}" --max-steps 2 --batch-size 8 --lr 0.005 --device gpu --out "$OUT/resnet-gpu1.safetensors" >/dev/null 2>"$OUT/train.err"
d=$("$OUT/fixture" diff "$OUT/resnet-gpu1.safetensors" "$OUT/resnet-gpu.safetensors")
[ "$d" = 0 ] || {
  echo "fake-gpu-test: ResNet-20 on fakecuda with FAKECUDA_THREADS=1 differs by $d from the run on $(nproc) threads"
  exit 1
}
# near A B WHAT: the weights and running statistics of files A and B are
# within 1e-5 of each other.
near() {
  local d
  d=$("$OUT/fixture" diff "$1" "$2")
  echo "fake-gpu-test: $3: weights and running statistics within $d of one CPU process's"
  within "$d" 0 1e-5 || {
    echo "fake-gpu-test: $3: more than 1e-5 from one CPU process's"
    exit 1
  }
}
near "$OUT/resnet-cpu.safetensors" "$OUT/resnet-gpu.safetensors" "ResNet-20, 2 steps on cuda:0 fakecuda (the same bits with the grids on 1 host thread)"
# --sync-batchnorm on devices: 2 processes on 2 fake GPUs, 4 digits each,
# end the same 2 steps where the one CPU process of batch 8 ended.
FAKECUDA_DEVICES=2 "$OUT/gotrain-gpu" launch --standalone --nproc-per-node 2 -- "${rn[@]}" --max-steps 2 --batch-size 8 --lr 0.005 \
  --device gpu --sync-batchnorm --out "$OUT/resnet-sync.safetensors" >/dev/null 2>"$OUT/train.err" || {
  tail -5 "$OUT/train.err"
  echo "fake-gpu-test: ResNet-20 with --sync-batchnorm on 2 fake GPUs failed"
  exit 1
}
near "$OUT/resnet-cpu.safetensors" "$OUT/resnet-sync.safetensors" "ResNet-20, 2 steps, --sync-batchnorm on 2 processes on cuda:0 and cuda:1 fakecuda"
# A few hundred steps: ResNet-20 on 4000 digits, batch 16, SGD with
# momentum and a cosine schedule over 2 epochs of 250 steps. The CPU runs
# both epochs; fakecuda resumes the CPU's checkpoint of the first and runs
# the second (250 steps). Both must end at the same test accuracy on 1000
# digits, within 0.5 points. (The first steps from initialisation are
# left to the CPU: there a BatchNorm ResNet turns a last-bit difference
# into a seed's worth of difference, PyTorch's too, and two seeds end up
# to a point apart; from the checkpoint on, the runs stay together.)
rm -rf "$OUT/digits4k" "$OUT/resnet-ck"
"$OUT/fixture" folder -dataset mnist -train 4000 -test 1000 "$OUT/digits4k"
rn=(train --model resnet --depth 20 --dataset folder --data-dir "$OUT/digits4k" --optimizer sgd --threads 2 --batch-size 16 --lr 0.05 --epochs 2)
cpu=$(acc "$OUT/gotrain-cpu" "${rn[@]}" --device cpu --checkpoint-dir "$OUT/resnet-ck" --keep-checkpoints 0)
gpu=$(acc "$OUT/gotrain-gpu" "${rn[@]}" --device gpu --resume "$OUT/resnet-ck/ckpt-0000000250.safetensors") || true
echo "fake-gpu-test: ResNet-20, epoch 2 (250 steps of 16 digits) on cuda:0 fakecuda from the CPU's epoch-1 checkpoint: test accuracy ${gpu:-none}%; both epochs on the CPU: $cpu% (1000 test digits)"
[ -n "$gpu" ] && [ -n "$cpu" ] && within "$gpu" "$cpu" 0.5 || {
  tail -5 "$OUT/train.err"
  echo "fake-gpu-test: ResNet-20 on fakecuda failed or ends more than 0.5 points from the CPU"
  exit 1
}

rec=$("$OUT/gotrain-gpu" bench train --device gpu --steps 20 --warmup 2 2>"$OUT/bench.err" | tail -1)
case $rec in
*'"pinned_memory":true'*'"samples_per_sec"'* | *'"samples_per_sec"'*'"pinned_memory":true'*) ;;
*)
  tail -5 "$OUT/bench.err"
  echo "fake-gpu-test: bench train --device gpu: $rec"
  exit 1
  ;;
esac
echo "fake-gpu-test: bench train --device gpu runs from page-locked memory"

${CC:-cc} -O2 -shared -fPIC -o "$OUT/libnccl.so.2" nccl/testdata/standin/standin.c -lpthread -lrt -ldl
export NCCL_LIBRARY=$OUT/libnccl.so.2
for job in "data parallel:" "data parallel, NCCL:--backend nccl --bucket-mb 0.1" \
  "2 pipeline stages:--pipeline-stages 2 --micro-batches 4 --batch-size 128" \
  "2 pipeline stages, NCCL:--backend nccl --pipeline-stages 2 --micro-batches 4 --batch-size 128"; do
  name=${job%%:*}
  read -r -a extra <<<"${job#*:}"
  args=(launch --standalone --nproc-per-node 2 -- train --model mlp --epochs 1 --max-steps 100 --threads 1 "${extra[@]}")
  g=$(FAKECUDA_DEVICES=2 acc "$OUT/gotrain-gpu" "${args[@]}" --device gpu) || true
  grep -q 'device="cuda:1 fakecuda' "$OUT/train.err" || g=""
  case $name in
  *NCCL) grep -q 'on the device" device="cuda:1\|device to device" device="cuda:1' "$OUT/train.err" || g="" ;;
  esac
  cpuargs=()
  for a in "${args[@]}"; do # the CPU build's same job on the CPU ring
    case $a in --backend | nccl | --bucket-mb | 0.1) ;; *) cpuargs+=("$a") ;; esac
  done
  c=$(acc "$OUT/gotrain-cpu" "${cpuargs[@]}" --device cpu) || true
  if [ -z "$g" ] || [ -z "$c" ]; then
    echo "fake-gpu-test: 2 processes, $name: no result on cuda:0 and cuda:1 (gpu '$g', cpu '$c')"
    exit 1
  fi
  echo "fake-gpu-test: 2 processes on cuda:0 and cuda:1, $name, 100 steps: test accuracy $g%, $c% on the CPU"
  within "$g" "$c" 0.5 || {
    echo "fake-gpu-test: the accuracies differ by more than 0.5 points"
    exit 1
  }
done

out=$(FAKECUDA_DEVICES=2 "$OUT/gotrain-gpu" bench allreduce --backend nccl --device gpu --max-bytes 1M --iters 3 --warmup 1 2>&1) || {
  echo "$out" | tail -5
  echo "fake-gpu-test: bench allreduce --backend nccl --device gpu failed"
  exit 1
}
if ! grep -q '^# Out of bounds values : 0 OK' <<<"$out" || [ "$(grep -c '^ *[0-9]' <<<"$out")" -lt 10 ]; then
  echo "$out" | tail -15
  echo "fake-gpu-test: bench allreduce --backend nccl --device gpu: wrong results"
  exit 1
fi
echo "fake-gpu-test: bench allreduce --backend nccl --device gpu on 2 fake GPUs: $(grep -c '^ *[0-9]' <<<"$out") sizes, none wrong"

# expect WHAT TEXT CMD...: CMD fails (or, for a test binary, passes) and
# its output holds TEXT.
expect() {
  local what=$1 text=$2 out
  shift 2
  out=$("$@" 2>&1) && [ "$what" = fails ] && { echo "fake-gpu-test: $* succeeded"; exit 1; }
  grep -qF -- "$text" <<<"$out" || {
    echo "$out" | tail -5
    echo "fake-gpu-test: $*: want \"$text\" in its output"
    exit 1
  }
}
FAKECUDA_DEVICES=0 expect fails "cuInit returned 100 CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)" \
  "$OUT/gotrain-gpu" train --device gpu --max-steps 1
FAKECUDA_DEVICES=0 expect skips "every test of this binary needs a GPU" "$OUT/executor.test" -test.v
FAKECUDA_DEVICES=2 WORLD_SIZE=4 RANK=3 LOCAL_RANK=3 LOCAL_WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 MASTER_PORT=1 \
  expect fails "no GPU 3: this machine has 2 (LOCAL_RANK picks the GPU; start at most 2 workers per node)" \
  "$OUT/gotrain-gpu" train --device gpu --max-steps 1
echo "fake-gpu-test: no GPU, and a LOCAL_RANK without one, are named"

# fault NAME RULE WANT...: gotrain-gpu train with FAKECUDA_FAULT=RULE exits
# 1 with each WANT in its error line, no panic, and a checkpoint that
# gotrain eval loads.
faultargs=(train --model mlp --epochs 1 --max-steps 30 --threads 2 --checkpoint-every 5 --device gpu)
fault() {
  local name=$1 rule=$2 dir=$OUT/fault-ckpt rc=0 line w
  shift 2
  rm -rf "$dir"
  FAKECUDA_FAULT=$rule "$OUT/gotrain-gpu" "${faultargs[@]}" --checkpoint-dir "$dir" >"$OUT/fault.out" 2>"$OUT/fault.err" || rc=$?
  line=$(grep '^gotrain train: error: ' "$OUT/fault.err" || true)
  if [ $rc -ne 1 ] || grep -qE '^(panic|fatal error|goroutine [0-9]+ \[)' "$OUT/fault.err"; then
    tail -5 "$OUT/fault.err"
    echo "fake-gpu-test: fault $name ($rule): exit status $rc, want 1 without a panic"
    exit 1
  fi
  grep -qF "fakecuda: FAKECUDA_FAULT $rule:" "$OUT/fault.err" || {
    tail -5 "$OUT/fault.err"
    echo "fake-gpu-test: fault $name ($rule) was not injected"
    exit 1
  }
  for w in "device cuda:0 fakecuda (the host): " "$@"; do
    grep -qF -- "$w" <<<"$line" || {
      tail -5 "$OUT/fault.err"
      echo "fake-gpu-test: fault $name ($rule): want \"$w\" in the error"
      exit 1
    }
  done
  local ck
  ck=$(cd "$dir" && ls ckpt-*.safetensors 2>/dev/null | tail -1)
  "$OUT/gotrain-cpu" eval --checkpoint "$dir" >"$OUT/fault-eval.out" 2>&1 && grep -q 'accuracy' "$OUT/fault-eval.out" || {
    tail -5 "$OUT/fault-eval.out"
    echo "fake-gpu-test: fault $name ($rule): the newest checkpoint ($dir/$ck) does not load"
    exit 1
  }
  echo "fake-gpu-test: fault $name: exit 1, $ck loads; ${line#gotrain train: error: }"
}
# The last allocation is the evaluation program's, at the end (step 30).
nalloc=$(FAKECUDA_TRACE_ALLOC=1 "$OUT/gotrain-gpu" "${faultargs[@]}" 2>&1 >/dev/null | grep -c '^fakecuda: cuMemAlloc ' || true)
fault "out of memory" "alloc:$nalloc" "compiling a program: " "cuMemAlloc " "CUDA_ERROR_OUT_OF_MEMORY"
fault "launch failure" "launch:relu:8" "running a program: " "launching kernel relu: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"
fault "sticky fault" "sticky:relu:8" "running a program: " "cuMemcpyDtoH 4 bytes: CUDA_ERROR_ILLEGAL_ADDRESS"
