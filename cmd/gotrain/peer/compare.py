#!/usr/bin/env python3
"""Side-by-side throughput of gotrain and its PyTorch peer, for `make bench`.

Runs `gotrain bench train` and `torch_train.py` alternately, REPEATS times
each per configuration, on the same machine and thread count, and prints the
median samples/s of each and their ratio (gotrain / PyTorch) as a Markdown
table. Usage: compare.py GOTRAIN_BIN [--repeats 5] [--threads 2] [--steps-scale 1]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = [  # (model, batch, optimizer, steps)
    ("mlp", 128, "adam", 600),
    ("cnn", 64, "adam", 150),
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
    a = ap.parse_args()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
    rows = []
    torch_version = "?"
    for model, batch, opt, steps in CONFIGS:
        steps = max(10, int(steps * a.steps_scale))
        common = ["--model", model, "--batch-size", str(batch), "--optimizer", opt,
                  "--threads", str(a.threads), "--steps", str(steps)]
        # PyTorch runs twice per round: as installed (its OpenMP threads plus
        # OpenBLAS's own pool), and with OPENBLAS_NUM_THREADS=1 (no nested
        # pools), which is faster here; the ratio is taken against the faster.
        one = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        g, t, t1 = [], [], []
        peer = ["/usr/bin/python3", os.path.join(HERE, "torch_train.py")] + common
        for _ in range(a.repeats):
            g.append(run([a.gotrain, "bench", "train"] + common)["samples_per_sec"])
            r = run(peer)
            torch_version = r["version"]
            t.append(r["samples_per_sec"])
            t1.append(run(peer, one)["samples_per_sec"])
        gm, tm, tm1 = statistics.median(g), statistics.median(t), statistics.median(t1)
        rows.append((model, batch, opt, gm, tm, tm1, gm / max(tm, tm1)))
        print(f"{model}: gotrain {[round(x) for x in g]} pytorch {[round(x) for x in t]} "
              f"pytorch(OPENBLAS_NUM_THREADS=1) {[round(x) for x in t1]}", file=sys.stderr)
    print(f"CPU: {cpu}, {os.cpu_count()} cores; threads {a.threads}; PyTorch {torch_version}; median of {a.repeats} alternating runs")
    print()
    print("| model | batch | optimiser | gotrain samples/s | PyTorch samples/s | PyTorch, OPENBLAS_NUM_THREADS=1 | gotrain / best PyTorch |")
    print("|---|---|---|---|---|---|---|")
    for model, batch, opt, gm, tm, tm1, ratio in rows:
        print(f"| {model} | {batch} | {opt} | {gm:.0f} | {tm:.0f} | {tm1:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
