#!/usr/bin/env python3
"""Side-by-side throughput of gotrain and its PyTorch peer, for `make bench`.

Runs `gotrain bench train` and `torch_train.py` alternately, REPEATS times
each per configuration, on the same machine and thread count, and prints the
median samples/s of each and their ratio (gotrain / PyTorch) as a Markdown
table, with gotrain's model GFLOP/s (its bench JSON's model_flops_per_step
over the measured step time) against the machine's sgemm peak (--peak-gflops;
about 190 GFLOP/s for 2 threads on the machine `make bench` was sized on).
Usage: compare.py GOTRAIN_BIN [--repeats 5] [--threads 2] [--steps-scale 1]
[--models mlp,cnn,resnet20] [--peak-gflops 190]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = [  # (name, batch, optimizer, steps, extra flags for both sides)
    ("mlp", 128, "adam", 600, ["--model", "mlp"]),
    ("cnn", 64, "adam", 150, ["--model", "cnn"]),
    # ResNet-20 is ~24 GFLOP a step at batch 128: few steps and a short
    # warm-up keep a round under ~40 s a side on 2 cores (gotrain ~0.6 s a
    # step). SGD with momentum 0.9 on both sides (bench train's, and
    # torch_train.py's, for --optimizer sgd), learning rate 0.1.
    ("resnet20", 128, "sgd", 40, ["--model", "resnet", "--depth", "20", "--lr", "0.1", "--warmup", "5"]),
]


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gotrain")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--models", default="", help="comma-separated configurations to run (default all: "
                    + ",".join(c[0] for c in CONFIGS) + ")")
    ap.add_argument("--peak-gflops", type=float, default=190.0,
                    help="this machine's sgemm peak at --threads, GFLOP/s, for gotrain's share of it")
    a = ap.parse_args()
    want = [m for m in a.models.split(",") if m]
    unknown = [m for m in want if m not in [c[0] for c in CONFIGS]]
    if unknown:
        ap.error(f"--models: unknown {','.join(unknown)} (have {','.join(c[0] for c in CONFIGS)})")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    rows = []
    torch_version = "?"
    for model, batch, opt, steps, extra in CONFIGS:
        if want and model not in want:
            continue
        steps = max(10, int(steps * a.steps_scale))
        common = extra + ["--batch-size", str(batch), "--optimizer", opt,
                          "--threads", str(a.threads), "--steps", str(steps)]
        # PyTorch runs twice per round: as installed (its OpenMP threads plus
        # OpenBLAS's own pool), and with OPENBLAS_NUM_THREADS=1 (no nested
        # pools), which is faster here; the ratio is taken against the faster.
        one = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        g, t, t1, gf = [], [], [], []
        flops = 0
        peer = ["/usr/bin/python3", os.path.join(HERE, "torch_train.py")] + common
        for _ in range(a.repeats):
            r = run([a.gotrain, "bench", "train"] + common)
            g.append(r["samples_per_sec"])
            gf.append(r.get("tflops", 0) * 1e3)
            flops = r.get("model_flops_per_step", 0)
            r = run(peer)
            torch_version = r["version"]
            t.append(r["samples_per_sec"])
            t1.append(run(peer, one)["samples_per_sec"])
        gm, tm, tm1 = statistics.median(g), statistics.median(t), statistics.median(t1)
        gfm = statistics.median(gf)
        # PyTorch trains the same model, so gotrain's FLOP count per sample
        # gives its rate too.
        tgf = flops / batch * max(tm, tm1) / 1e9
        rows.append((model, batch, opt, gm, tm, tm1, gm / max(tm, tm1), gfm, tgf))
        print(f"{model}: gotrain {[round(x) for x in g]} pytorch {[round(x) for x in t]} "
              f"pytorch(OPENBLAS_NUM_THREADS=1) {[round(x) for x in t1]} "
              f"gotrain GFLOP/s {[round(x, 1) for x in gf]} ({flops / 1e9:.3g} GFLOP a step)", file=sys.stderr)
    print(f"CPU: {cpu}, {os.cpu_count()} cores; threads {a.threads}; PyTorch {torch_version}; median of {a.repeats} alternating runs; "
          f"GFLOP/s are model FLOPs (gotrain's count, forward and backward) a second, against an sgemm peak of {a.peak_gflops:g} GFLOP/s")
    print()
    print("| model | batch | optimiser | gotrain samples/s | PyTorch samples/s | PyTorch, OPENBLAS_NUM_THREADS=1 | gotrain / best PyTorch "
          "| gotrain GFLOP/s | of peak | best PyTorch GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, batch, opt, gm, tm, tm1, ratio, gfm, tgf in rows:
        print(f"| {model} | {batch} | {opt} | {gm:.0f} | {tm:.0f} | {tm1:.0f} | {ratio:.2f} "
              f"| {gfm:.1f} | {gfm / a.peak_gflops:.0%} | {tgf:.1f} | {tgf / a.peak_gflops:.0%} |")


if __name__ == "__main__":
    main()
