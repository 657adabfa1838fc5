#!/usr/bin/env python3
"""PyTorch peer of example csvmlp: the same MLP, the same CSV, the same recipe.

Reads DIR/train.csv and DIR/test.csv (a header row, feature columns and a
"label" column), standardises every feature by the training split's mean
and (population) standard deviation, trains

    Linear(20, W1) - act - Dropout(p) - Linear(W1, W2) - act - Dropout(p) - Linear(W2, classes)

with Adam (PyTorch's defaults but lr) on mini-batches of a fresh permutation
per epoch, a mean cross-entropy loss, and prints one JSON line with the test
accuracy of the final model (and its mean over --repeats seeds).

With --eval-weights FILE it loads gotrain's weights into the same module
(state_dict names hidden.0.weight ... head.bias) with strict=True and prints
their test accuracy, standardised by the constants the file records.

Usage: peer_torch.py DIR [--epochs 8] [--batch-size 64] [--lr 0.001]
                         [--widths 96,48] [--activation tanh] [--dropout 0.1]
                         [--seed 1] [--repeats 1]
Run with /usr/bin/python3 (Debian's python3-torch).
"""
import argparse
import json
import statistics

import numpy as np
import torch
from torch import nn


def load(path):
    with open(path) as f:
        header = f.readline().strip().split(",")
    a = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    li = header.index("label")
    y = a[:, li].astype(np.int64)
    x = np.delete(a, li, axis=1).astype(np.float32)
    return x, y


class MLP(nn.Module):
    """csvmlp's model, with its state_dict names: hidden.0, hidden.1, ..., head."""

    def __init__(self, inputs, widths, act, p, classes):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        self.hidden = nn.ModuleList()
        n = inputs
        for w in widths:
            self.hidden.append(nn.Linear(n, w))
            n = w
        self.head = nn.Linear(n, classes)
        self.act = acts[act]()
        self.drop = nn.Dropout(p)

    def forward(self, x):
        for l in self.hidden:
            x = self.drop(self.act(l(x)))
        return self.head(x)


def model(inputs, widths, act, p, classes):
    return MLP(inputs, widths, act, p, classes)


def load_safetensors(path):
    """The tensors and metadata of a safetensors file."""
    import struct
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    d = b[8 + n:]
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        out[k] = torch.tensor(np.frombuffer(d[s:e], dtype=np.float32).copy().reshape(v["shape"]))
    return out, meta


def eval_weights(path, a):
    """Load gotrain's weights with strict=True and evaluate them on DIR/test.csv,
    standardised by the constants the file records."""
    sd, meta = load_safetensors(path)
    xte, yte = load(a.dir + "/test.csv")
    mean = np.array([float(v) for v in meta["data.mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in meta["data.std"].split(",")], dtype=np.float32)
    classes = sd["head.bias"].shape[0]
    m = model(xte.shape[1], a.widths, a.activation, a.dropout, classes)
    m.load_state_dict(sd, strict=True)
    m.eval()
    x = torch.tensor((xte - mean) / std)
    with torch.no_grad():
        acc = (m(x).argmax(1) == torch.tensor(yte)).float().mean().item()
    print(json.dumps({"impl": "pytorch", "loaded": path, "strict": True, "test_accuracy": acc}))


def train_once(xtr, ytr, xte, yte, a, seed):
    torch.manual_seed(seed)
    classes = int(ytr.max()) + 1
    m = model(xtr.shape[1], a.widths, a.activation, a.dropout, classes)
    opt = torch.optim.Adam(m.parameters(), lr=a.lr)
    lossf = nn.CrossEntropyLoss()
    n = xtr.shape[0]
    for _ in range(a.epochs):
        m.train()
        perm = torch.randperm(n)
        for lo in range(0, n, a.batch_size):
            idx = perm[lo:lo + a.batch_size]
            opt.zero_grad()
            loss = lossf(m(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        return (m(xte).argmax(1) == yte).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--widths", default="96,48")
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--eval-weights", help="load this gotrain weights file (strict=True) and evaluate it instead of training")
    a = ap.parse_args()
    a.widths = [int(w) for w in a.widths.split(",")]
    if a.eval_weights:
        eval_weights(a.eval_weights, a)
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    xtr, ytr = load(a.dir + "/train.csv")
    xte, yte = load(a.dir + "/test.csv")
    mean = xtr.astype(np.float64).mean(0)
    std = xtr.astype(np.float64).std(0)
    std[std == 0] = 1
    xtr = torch.tensor(((xtr - mean) / std).astype(np.float32))
    xte = torch.tensor(((xte - mean) / std).astype(np.float32))
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    accs = [train_once(xtr, ytr, xte, yte, a, a.seed + r) for r in range(a.repeats)]
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "test_accuracy": accs[-1] if a.repeats == 1 else statistics.mean(accs),
                      "runs": accs, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "widths": a.widths,
                      "activation": a.activation, "dropout": a.dropout}))


if __name__ == "__main__":
    main()
