#!/usr/bin/env python3
"""PyTorch peer for `make bench`: the same models, batch and optimiser as
`gotrain bench train`, timed the same way (training steps on a fixed set of
synthetic batches after warm-up), printed as one JSON line.

Run with Debian's python3-torch: /usr/bin/python3 torch_train.py --model mlp
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet import ResNet  # noqa: E402  (graph/resnet.go's model, torchvision's names)


class MLP(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        dims = [784] + hidden + [10]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        x = x.view(x.shape[0], -1)
        for l in self.layers[:-1]:
            x = F.relu(l(x))
        return self.layers[-1](x)


class CNN(nn.Module):
    # Must match graph.New(Spec{Kind: "cnn"}): conv5x5(16, pad 2)-relu-pool2-conv5x5(32)-relu-pool2-fc(128)-relu-fc(10)
    def __init__(self, hidden=128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 5 * 5, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "resnet"])
    ap.add_argument("--hidden", default="")
    ap.add_argument("--depth", type=int, default=20, help="resnet: layers, 6n+2")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--autocast", default="", choices=["", "bf16"],
                    help="bf16: torch.autocast to bfloat16 (what gotrain's --precision bf16 compares with)")
    ap.add_argument("--allow-tf32", action="store_true",
                    help="let cuBLAS and cuDNN use TF32 (off: FP32 throughout, like gotrain's --precision fp32)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.allow_tf32
        torch.backends.cudnn.allow_tf32 = a.allow_tf32
    torch.manual_seed(1)
    hidden = [int(h) for h in a.hidden.split(",") if h]
    if a.model == "mlp":
        model = MLP(hidden or [256])
    elif a.model == "cnn":
        model = CNN(*(hidden[:1] or [128]))
    else:
        model = ResNet(a.depth, 1, 10)
    model = model.to(dev)
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=a.lr, momentum=0.9),
           "adam": lambda p: torch.optim.Adam(p, lr=a.lr),
           "adamw": lambda p: torch.optim.AdamW(p, lr=a.lr)}[a.optimizer](model.parameters())
    nb = 16
    xs = torch.rand(nb, a.batch_size, 1, 28, 28, device=dev)
    ys = torch.randint(0, 10, (nb, a.batch_size), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def forward(x, y):
        if a.autocast:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return F.cross_entropy(model(x), y)
        return F.cross_entropy(model(x), y)

    def step(i):
        x, y = xs[i % nb], ys[i % nb]
        opt.zero_grad(set_to_none=True)
        loss = forward(x, y)
        loss.backward()
        opt.step()
        return loss

    for i in range(a.warmup):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(i)
    loss = float(loss)  # waits for the device
    dt = time.perf_counter() - t0
    print(json.dumps({"impl": "pytorch", "version": torch.__version__, "model": a.model,
                      "depth": a.depth if a.model == "resnet" else None, "device": str(dev),
                      "tf32": a.allow_tf32 if dev.type == "cuda" else False, "autocast": a.autocast,
                      "batch_size": a.batch_size, "optimizer": a.optimizer, "threads": a.threads,
                      "steps": a.steps, "seconds": dt, "samples_per_sec": a.steps * a.batch_size / dt,
                      "loss": loss}))


if __name__ == "__main__":
    main()
