#!/usr/bin/env python3
"""Side-by-side all-reduce bandwidth: `gotrain bench allreduce` (CPU ring)
against PyTorch's Gloo backend, both on this host, float32 sum, for
`make bench-allreduce`. Runs the two alternately REPEATS times per world
size and prints the median bus bandwidth of each and their ratio.

Usage: compare_allreduce.py GOTRAIN_BIN [--bytes 64M] [--nprocs 2,4] [--repeats 5]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def gotrain_busbw(binary, n, size):
    out = subprocess.run([binary, "bench", "allreduce", "--nproc", str(n), "--min-bytes", size, "--max-bytes", size,
                          "--iters", "10", "--warmup", "3"], check=True, capture_output=True, text=True).stdout
    rows = [l.split() for l in out.splitlines() if l.strip() and not l.startswith("#")]
    return float(rows[-1][6])  # out-of-place busbw


def gloo_busbw(n, size):
    out = subprocess.run(["/usr/bin/python3", os.path.join(HERE, "gloo_allreduce.py"), "--nproc", str(n), "--bytes", size,
                          "--iters", "10", "--warmup", "3"], check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return r["busbw"], r["torch"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gotrain")
    ap.add_argument("--bytes", default="64M")
    ap.add_argument("--nprocs", default="2,4")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    rows, version = [], "?"
    for n in [int(x) for x in a.nprocs.split(",")]:
        g, t = [], []
        for _ in range(a.repeats):
            g.append(gotrain_busbw(a.gotrain, n, a.bytes))
            bw, version = gloo_busbw(n, a.bytes)
            t.append(bw)
        print(f"{n} ranks: gotrain {g} gloo {[round(x, 3) for x in t]}", file=sys.stderr)
        rows.append((n, statistics.median(g), statistics.median(t)))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"{cpu}, {os.cpu_count()} cores; {a.bytes} float32 sum on one host; PyTorch {version} Gloo; median of {a.repeats} alternating runs")
    print()
    print("| ranks | gotrain busbw (GB/s) | Gloo busbw (GB/s) | ratio |")
    print("|---|---|---|---|")
    for n, gm, tm in rows:
        print(f"| {n} | {gm:.2f} | {tm:.2f} | {gm / tm:.2f} |")


if __name__ == "__main__":
    main()
