#!/usr/bin/env python3
"""PyTorch Gloo peer for `make bench-allreduce`: all-reduce (sum) of float32
buffers between NPROC processes on loopback, timed like nccl-tests, printed
as one JSON line per size: {"impl":"gloo","nproc":..,"bytes":..,"time_us":..,"algbw":..,"busbw":..}.

Run with Debian's python3-torch: /usr/bin/python3 gloo_allreduce.py --nproc 2 --bytes 64M
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper().rstrip("B")
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def worker(rank, nproc, port, sizes, iters, warmup, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=nproc)
    for nbytes in sizes:
        n = max(nbytes // 4, 1)
        buf = torch.full((n,), float(rank + 1), dtype=torch.float32)
        for _ in range(warmup):
            dist.all_reduce(buf)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        dt = (time.perf_counter() - t0) / iters
        if rank == 0:
            algbw = n * 4 / dt / 1e9
            out.put({"impl": "gloo", "torch": torch.__version__, "nproc": nproc, "bytes": n * 4, "time_us": dt * 1e6,
                     "algbw": algbw, "busbw": algbw * 2 * (nproc - 1) / nproc})
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--bytes", default="64M", help="comma-separated sizes, e.g. 1M,64M")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    sizes = [parse_size(s) for s in a.bytes.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, a.nproc, port, sizes, a.iters, a.warmup, out)) for r in range(a.nproc)]
    for p in procs:
        p.start()
    results = [out.get() for _ in sizes]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"gloo worker exited with {p.exitcode}")
    for r in results:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
