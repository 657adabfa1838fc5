#!/usr/bin/env python3
"""GPU benchmark: gotrain's gpu build against PyTorch eager on the same card.

Both train the same models on synthetic batches kept on the device, FP32
(PyTorch with TF32 off, as gotrain's cuBLAS SGEMM; --allow-tf32 lets
PyTorch use TF32 as it does by default for convolutions), timed after a
warm-up. Runs alternate; medians of REPEATS are reported with the ratio and
the model FLOP utilisation against --peak-tflops (an H100 or H200 SXM:
67 TFLOP/s FP32 without tensor cores).

With --precision bf16, gotrain runs --precision bf16 and PyTorch
torch.autocast(bfloat16); give --peak-tflops the card's dense BF16 tensor
peak (989 for an H100 SXM) for the utilisation.

Usage: python3 compare_gpu.py GOTRAIN_GPU_BIN [--repeats 5] [--peak-tflops 67] [--precision fp32|bf16]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [
    ("MLP 4x4096, batch 512", ["--model", "mlp", "--hidden", "4096,4096,4096,4096", "--batch-size", "512"]),
    ("CNN, batch 512", ["--model", "cnn", "--batch-size", "512"]),
    ("ResNet-20, batch 128", ["--model", "resnet", "--depth", "20", "--batch-size", "128"]),
]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gotrain")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--peak-tflops", type=float, default=67.0)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--allow-tf32", action="store_true")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: gotrain --precision bf16 against PyTorch's torch.autocast(bfloat16)")
    a = ap.parse_args()
    common = ["--optimizer", a.optimizer, "--steps", str(a.steps), "--warmup", "10"]
    rows = []
    for name, args in CASES:
        g, t, flops = [], [], 0
        for _ in range(a.repeats):
            rec = run([a.gotrain, "bench", "train", "--device", "gpu", "--precision", a.precision,
                       "--peak-tflops", str(a.peak_tflops)] + args + common)
            g.append(rec["samples_per_sec"])
            flops = rec["model_flops_per_step"]
            cmd = [sys.executable, os.path.join(HERE, "torch_train.py"), "--device", "cuda"] + args + common
            if a.allow_tf32:
                cmd.append("--allow-tf32")
            if a.precision == "bf16":
                cmd += ["--autocast", "bf16"]
            t.append(run(cmd)["samples_per_sec"])
            print(name, round(g[-1]), round(t[-1]), file=sys.stderr, flush=True)
        gm, tm = statistics.median(g), statistics.median(t)
        batch = int(args[args.index("--batch-size") + 1])
        tfl = lambda s: flops / batch * s / 1e12
        rows.append((name, gm, tm, gm / tm, tfl(gm), tfl(tm)))
    print(f"median of {a.repeats}; {a.steps} timed steps; optimizer {a.optimizer}; precision {a.precision}; "
          f"MFU against {a.peak_tflops} TFLOP/s; PyTorch TF32 {'on' if a.allow_tf32 else 'off'}")
    print()
    print("| model | gotrain samples/s | PyTorch samples/s | ratio | gotrain TFLOP/s (MFU) | PyTorch TFLOP/s (MFU) |")
    print("|---|---|---|---|---|---|")
    for name, gm, tm, r, gf, tf in rows:
        print(f"| {name} | {gm:,.0f} | {tm:,.0f} | {r:.2f} | {gf:.1f} ({gf / a.peak_tflops:.1%}) | {tf:.1f} ({tf / a.peak_tflops:.1%}) |")


if __name__ == "__main__":
    main()
