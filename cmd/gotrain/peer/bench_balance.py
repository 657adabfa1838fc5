#!/usr/bin/env python3
"""Load-balancing benchmark for `make bench-balance`.

Two ranks on this host train the CNN on synthetic data; rank 1 is made
FACTOR times slower in a reproducible way (--debug-slow-rank 1:FACTOR: it
sleeps (FACTOR-1) times its compute time every step). The script compares
the time per epoch of --balance off and --balance adaptive, and the ideal:
the epoch at the sum of the two ranks' speeds, each measured alone (one
process as fast as rank 0, one as slow as rank 1). Runs alternate; medians
of REPEATS are reported.

Usage: bench_balance.py GOTRAIN_BIN [--repeats 3] [--factor 2.0]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

COMMON = ["--model", "cnn", "--dataset", "synthetic", "--synthetic-size", "60000", "--epochs", "1",
          "--batch-size", "128", "--threads", "1", "--balance-every", "10", "--eval-batch-size", "500"]


def summary(path):
    with open(path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    return next(r for r in recs if r["kind"] == "summary")


def run(binary, args, tmp, name):
    m = os.path.join(tmp, name + ".jsonl")
    subprocess.run([binary] + args + ["--metrics-file", m], check=True, capture_output=True, text=True)
    s = summary(m)
    return 60000 / s["train_samples_per_sec"]  # seconds per epoch of training


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gotrain")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--factor", type=float, default=2.0)
    a = ap.parse_args()
    slow = f"1:{a.factor}"
    res = {"off": [], "adaptive": [], "fast": [], "slow": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for mode in ("off", "adaptive"):
                res[mode].append(run(a.gotrain, ["launch", "--standalone", "--nproc-per-node", "2", "--", "train"] + COMMON +
                                     ["--balance", mode, "--debug-slow-rank", slow], tmp, f"{mode}{i}"))
            res["fast"].append(run(a.gotrain, ["train"] + COMMON, tmp, f"fast{i}"))
            res["slow"].append(run(a.gotrain, ["train"] + COMMON + ["--debug-slow-rank", f"0:{a.factor}"], tmp, f"slow{i}"))
            print({k: [round(x, 2) for x in v] for k, v in res.items()}, file=sys.stderr)
    med = {k: statistics.median(v) for k, v in res.items()}
    # Speeds in epochs per second add up: the ideal epoch time of the pair.
    ideal = 1 / (1 / med["fast"] + 1 / med["slow"])
    cut = 1 - med["adaptive"] / med["off"]
    print(f"CNN, synthetic 60000 samples (an MNIST-sized epoch), batch 128, 2 ranks on one host, rank 1 slowed {a.factor}x; median of {a.repeats}")
    print()
    print("| run | seconds per epoch |")
    print("|---|---|")
    print(f"| --balance off | {med['off']:.2f} |")
    print(f"| --balance adaptive | {med['adaptive']:.2f} |")
    print(f"| ideal (the two ranks' speeds added, each measured alone) | {ideal:.2f} |")
    print()
    print(f"adaptive cuts the epoch by {100 * cut:.1f}% against off; it is {100 * (med['adaptive'] / ideal - 1):.1f}% above the ideal")


if __name__ == "__main__":
    main()
