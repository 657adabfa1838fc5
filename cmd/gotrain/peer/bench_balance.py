#!/usr/bin/env python3
"""Load-balancing benchmark for `make bench-balance`.

Two ranks on this host train the CNN on synthetic data; rank 1 is made
FACTOR times slower in a reproducible way (--debug-slow-rank 1:FACTOR: it
sleeps (FACTOR-1) times its compute time every step). The script compares
the time per epoch of --balance off and --balance adaptive with the ideal:
an epoch at the sum of the two ranks' speeds.

The ranks' speeds are measured side by side: two independent one-process
runs started together, one as fast as rank 0 and one slowed like rank 1
(with half the samples, so that both run for about the same time). That is
each rank's speed under the conditions of the job: on a small host the two
processes share caches and memory bandwidth, and a process alone runs
faster than either of two together, so an ideal from solo runs would count
speed that no pair of processes has here. With --solo the solo ideal is
printed too, for comparison.

The job's workers are bound to CPUs as the launcher's --cpu-bind (default
auto: one block of CPUs per rank) says. The side-by-side pair runs both
unbound and bound like the job's ranks (the fast one on rank 0's block,
the slow one on rank 1's); the ideal of a repeat is the faster of the two,
so that binding cannot make the ideal look slower than it can be.

The job also measures its ranks' speeds itself, at the same time as it
trains: each rank's samples over the seconds of its forward and backward
passes (the summary's rank_compute_samples_per_sec). Their sum is the
ideal under exactly the job's conditions; on a virtual machine whose CPUs
slow down for minutes at a time (a neighbour on the host), it is the
ideal that a side-by-side pair run at another moment cannot give.

Runs alternate; medians of REPEATS are reported. The host's speed drifts
by tens of percent over minutes (a virtual machine's neighbours), which
moves the medians of off and adaptive apart by chance; each repeat's off
and adaptive run back to back, so the median of the repeats' own cuts is
reported too.

Usage: bench_balance.py GOTRAIN_BIN [--repeats 3] [--factor 2.0] [--batch-size 128] [--balance-every 10] [--cpu-bind auto] [--solo]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

SAMPLES = 60000
COMMON = ["--model", "cnn", "--dataset", "synthetic", "--epochs", "1", "--threads", "1", "--eval-batch-size", "500"]


def summary(path):
    with open(path) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    return next(r for r in recs if r["kind"] == "summary")


def start(binary, args, tmp, name, samples=SAMPLES, cpus=None):
    m = os.path.join(tmp, name + ".jsonl")
    bind = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    p = subprocess.Popen([binary] + args + COMMON + ["--synthetic-size", str(samples), "--metrics-file", m],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=bind)
    return p, m


def blocks(n):
    """The launcher's --cpu-bind cores split of this process's CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < n:
        return None
    q, rem = divmod(len(cpus), n)
    out, off = [], 0
    for i in range(n):
        size = q + (1 if i < rem else 0)
        out.append(cpus[off:off + size])
        off += size
    return out


def speed(proc, ranks=None):
    """Waits for a run; returns its training speed in samples/s. ranks, a
    list, gets the sum of the ranks' computation speeds."""
    p, m = proc
    out, err = p.communicate()
    if p.returncode != 0:
        sys.exit(f"gotrain failed ({p.returncode}):\n{err[-3000:]}")
    s = summary(m)
    if ranks is not None:
        ranks.append(sum(s["rank_compute_samples_per_sec"]))
    return s["train_samples_per_sec"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gotrain")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--solo", action="store_true", help="also measure each rank's speed alone")
    ap.add_argument("--balance-every", type=int, default=10, help="steps between re-plans")
    ap.add_argument("--cpu-bind", default="auto", help="the launcher's --cpu-bind for the job")
    ap.add_argument("--batch-size", type=int, default=128, help="the global batch")
    a = ap.parse_args()
    COMMON.extend(["--balance-every", str(a.balance_every), "--batch-size", str(a.batch_size)])
    job = [a.gotrain, "launch", "--standalone", "--nproc-per-node", "2", "--cpu-bind", a.cpu_bind, "--", "train"]
    bound = blocks(2)
    slow = ["--debug-slow-rank", f"0:{a.factor}"]
    res = {"off": [], "adaptive": [], "pair": [], "pair-unbound": [], "pair-bound": [], "solo": [], "in-job": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.repeats):
            for mode in ("off", "adaptive"):
                ranks = []
                s = speed(start(job[0], job[1:] + ["--balance", mode, "--debug-slow-rank", f"1:{a.factor}"], tmp, f"{mode}{i}"), ranks)
                res[mode].append(SAMPLES / s)
                if mode == "adaptive":
                    res["in-job"].append(SAMPLES / ranks[0])
            # Side by side: both processes start together; the slow one has
            # 1/FACTOR of the samples so that they end together.
            for how, cpus in (("unbound", [None, None]), ("bound", bound)):
                if cpus is None:
                    continue
                fast = start(a.gotrain, ["train"], tmp, f"pf{how}{i}", cpus=cpus[0])
                slowp = start(a.gotrain, ["train"] + slow, tmp, f"ps{how}{i}", int(SAMPLES / a.factor), cpus=cpus[1])
                res["pair-" + how].append(SAMPLES / (speed(fast) + speed(slowp)))
            res["pair"].append(min(res["pair-unbound"][-1], *res["pair-bound"][-1:]))
            if a.solo:
                sf = speed(start(a.gotrain, ["train"], tmp, f"sf{i}"))
                ss = speed(start(a.gotrain, ["train"] + slow, tmp, f"ss{i}", int(SAMPLES / a.factor)))
                res["solo"].append(SAMPLES / (sf + ss))
            print({k: [round(x, 2) for x in v] for k, v in res.items() if v}, file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in res.items() if v}
    cut = 1 - med["adaptive"] / med["off"]
    paired = statistics.median(1 - a / o for a, o in zip(res["adaptive"], res["off"]))
    above = statistics.median(a / p - 1 for a, p in zip(res["adaptive"], res["pair"]))
    print(f"CNN, synthetic {SAMPLES} samples (an MNIST-sized epoch), batch {a.batch_size}, 2 ranks on one host, "
          f"rank 1 slowed {a.factor}x, --balance-every {a.balance_every}, --cpu-bind {a.cpu_bind}; median of {a.repeats}")
    print()
    print("| run | seconds per epoch |")
    print("|---|---|")
    print(f"| --balance off | {med['off']:.2f} |")
    print(f"| --balance adaptive | {med['adaptive']:.2f} |")
    print(f"| ideal: the two ranks' speeds added, measured side by side (the faster of unbound and bound) | {med['pair']:.2f} |")
    for how in ("unbound", "bound"):
        if "pair-" + how in med:
            print(f"| (side by side, {how} only) | {med['pair-' + how]:.2f} |")
    if "solo" in med:
        print(f"| (for comparison: the speeds measured each alone) | {med['solo']:.2f} |")
    print(f"| ideal measured inside the adaptive job: its ranks' computation speeds added | {med['in-job']:.2f} |")
    print()
    print(f"adaptive cuts the epoch by {100 * cut:.1f}% against off; "
          f"it is {100 * (med['adaptive'] / med['pair'] - 1):.1f}% above the ideal")
    print(f"median of the repeats' own figures: cut {100 * paired:.1f}%, {100 * above:.1f}% above the ideal")
    injob = statistics.median(a / j - 1 for a, j in zip(res["adaptive"], res["in-job"]))
    print(f"adaptive is {100 * injob:.1f}% above the ideal measured inside the same run (median of the repeats)")


if __name__ == "__main__":
    main()
