#!/usr/bin/env python3
"""Generate golden.json for package optim from PyTorch.

Run from anywhere (not from inside the torch package directory):

    python3 trainer/optim/testdata/gen_golden.py > trainer/optim/testdata/golden.json

Generated with torch 1.13.1 (Debian python3-torch, CPU, 1 thread).  Every
float32 value is written as the exact decimal of its float32 value (Python's
repr of the float64 it converts to), so Go reads back bit-identical inputs.
"""
import json
import math
import sys
import warnings

import torch

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

# Two parameters, like one linear layer.  133 elements exercise both the
# vectorised main loop (16 floats per iteration with AVX2) and the scalar tail
# of ATen's CPU kernels; 5 elements are tail only.
SHAPES = [("fc1.weight", 133), ("fc1.bias", 5)]
STEPS = 5


def tensors(seed, scale):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, generator=g, dtype=torch.float64) * scale).float() for _, n in SHAPES]


def initial_params():
    return tensors(1234, 0.5)


def grad_sequence():
    # Gradients of varying magnitude, including one tiny and one large step,
    # so that the Adam second moment and eps both matter.
    scales = [1.0, 0.1, 3.0, 1e-4, 0.5]
    return [tensors(100 + i, s) for i, s in enumerate(scales)]


def optimizer_case(name, cfg, lrs):
    params = [torch.nn.Parameter(t.clone()) for t in initial_params()]
    kind = cfg["name"]
    wd = cfg.get("weight_decay", 0.0)
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lrs[0], momentum=cfg.get("momentum", 0.0),
                              dampening=cfg.get("dampening", 0.0), nesterov=cfg.get("nesterov", False),
                              weight_decay=wd, foreach=False)
    else:
        betas = (cfg.get("beta1", 0.9), cfg.get("beta2", 0.999))
        eps = cfg.get("eps", 1e-8)
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        opt = cls(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=wd, foreach=False)
    grads = grad_sequence()
    expected = []
    for step in range(STEPS):
        for group in opt.param_groups:
            group["lr"] = lrs[step]
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        opt.step()
        expected.append([p.detach().tolist() for p in params])
    state = {}
    for (pname, _), p in zip(SHAPES, params):
        st = opt.state[p]
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if st.get(key) is not None:
                state[pname + "." + key] = st[key].tolist()
    return {
        "name": name,
        "config": cfg,
        "lrs": lrs,
        "expected": expected,
        "state": state,
        "step": STEPS,
    }


def optimizer_cases():
    const = lambda lr: [lr] * STEPS
    return [
        optimizer_case("sgd_plain", {"name": "sgd"}, const(0.1)),
        optimizer_case("sgd_momentum", {"name": "sgd", "momentum": 0.9}, const(0.05)),
        optimizer_case("sgd_momentum_dampening", {"name": "sgd", "momentum": 0.8, "dampening": 0.3,
                                                  "weight_decay": 0.01}, const(0.05)),
        optimizer_case("sgd_nesterov_wd", {"name": "sgd", "momentum": 0.9, "nesterov": True,
                                           "dampening": 0.0, "weight_decay": 5e-4}, const(0.1)),
        optimizer_case("adam", {"name": "adam"}, const(1e-3)),
        optimizer_case("adam_wd", {"name": "adam", "weight_decay": 0.01}, const(1e-2)),
        optimizer_case("adam_betas_eps", {"name": "adam", "beta1": 0.8, "beta2": 0.99, "eps": 1e-6},
                       const(3e-3)),
        optimizer_case("adamw", {"name": "adamw", "weight_decay": 0.01}, const(1e-3)),
        # lr changes between steps, as a schedule would do.
        optimizer_case("adamw_varying_lr", {"name": "adamw", "weight_decay": 0.1},
                       [1e-3, 2e-3, 3e-3, 2.5e-3, 1e-3]),
    ]


def run_scheduler(base_lr, make, n):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def schedule_cases():
    S = torch.optim.lr_scheduler
    cases = []

    def add(name, sched, make, n):
        cases.append({"name": name, "schedule": sched, "lrs": run_scheduler(sched["base_lr"], make, n)})

    add("step", {"kind": "step", "base_lr": 0.1, "step_size": 3, "gamma": 0.5},
        lambda o: S.StepLR(o, step_size=3, gamma=0.5), 14)
    add("step_gamma_0.1", {"kind": "step", "base_lr": 0.01, "step_size": 1, "gamma": 0.1},
        lambda o: S.StepLR(o, step_size=1, gamma=0.1), 6)
    add("cosine", {"kind": "cosine", "base_lr": 0.1, "total_steps": 10, "min_lr": 0.001},
        lambda o: S.CosineAnnealingLR(o, T_max=10, eta_min=0.001), 11)
    add("cosine_min0", {"kind": "cosine", "base_lr": 3e-4, "total_steps": 50},
        lambda o: S.CosineAnnealingLR(o, T_max=50), 51)
    # Linear warm-up: LinearLR(start_factor=1/W, total_iters=W-1) gives
    # BaseLR*(step+1)/W for step < W and BaseLR afterwards.
    add("constant_warmup", {"kind": "constant", "base_lr": 0.02, "warmup_steps": 5},
        lambda o: S.LinearLR(o, start_factor=1 / 5, end_factor=1.0, total_iters=4), 9)
    # Warm-up then cosine over the remaining TotalSteps-W steps.
    add("cosine_warmup", {"kind": "cosine", "base_lr": 0.1, "warmup_steps": 4, "total_steps": 20, "min_lr": 1e-4},
        lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=1 / 4, end_factor=1.0, total_iters=3),
                                     S.CosineAnnealingLR(o, T_max=16, eta_min=1e-4)], milestones=[4]), 21)
    return cases


def clip_case(name, max_norm, scale):
    grads = tensors(7, scale)
    ref = [g.clone() for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return {
        "name": name,
        "max_norm": max_norm,
        "grads": [g.tolist() for g in ref],
        "total_norm": float(total),
        "clipped": [p.grad.tolist() for p in params],
    }


def clip_cases():
    return [
        clip_case("clips", 1.0, 1.0),           # norm ~ 13 > 1: scaled
        clip_case("no_clip", 100.0, 1.0),       # norm < max: unchanged
        clip_case("clips_small", 0.01, 0.05),
    ]


def main():
    out = {
        "torch_version": torch.__version__,
        # Shared by every optimizer case: initial parameters and the gradient
        # of each of the STEPS steps.
        "params": [{"name": n, "data": t.tolist()} for (n, _), t in zip(SHAPES, initial_params())],
        "grads": [[t.tolist() for t in step] for step in grad_sequence()],
        "optimizers": optimizer_cases(),
        "schedules": schedule_cases(),
        "clip": clip_cases(),
    }
    write(out, sys.stdout, "")
    sys.stdout.write("\n")


def write(v, f, indent):
    """JSON with one line per list of numbers, so the file diffs sensibly."""
    inner = indent + " "
    if isinstance(v, dict):
        f.write("{\n")
        for i, (k, x) in enumerate(v.items()):
            f.write(inner + json.dumps(k) + ": ")
            write(x, f, inner)
            f.write(",\n" if i < len(v) - 1 else "\n")
        f.write(indent + "}")
    elif isinstance(v, list) and v and not all(isinstance(x, (int, float)) for x in v):
        f.write("[\n")
        for i, x in enumerate(v):
            f.write(inner)
            write(x, f, inner)
            f.write(",\n" if i < len(v) - 1 else "\n")
        f.write(indent + "]")
    else:
        f.write(json.dumps(v, separators=(",", ":")))


if __name__ == "__main__":
    main()
