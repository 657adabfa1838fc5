#!/usr/bin/env python3
"""Golden values for graph's new ops, from PyTorch (Debian's python3-torch):
  /usr/bin/python3 graph/testdata/gen_golden.py > graph/testdata/golden_ops.json

Each case gives the inputs, the upstream gradient dy, PyTorch's output and
the gradients of sum(y*dy) with respect to every input that has one, in
float32, as flat lists with their shapes. graph's TestGoldenOps compares
with them (1e-5 relative)."""
import json

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)


def flat(t):
    return {"shape": list(t.shape), "data": [float(v) for v in t.detach().reshape(-1).tolist()]}


def batchnorm(name, shape, train, momentum=0.1, eps=1e-5):
    c = shape[1]
    bn = nn.BatchNorm2d(c, eps=eps, momentum=momentum) if len(shape) == 4 else nn.BatchNorm1d(c, eps=eps, momentum=momentum)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c) + 0.5)
        bn.bias.copy_(torch.randn(c))
        bn.running_mean.copy_(torch.randn(c) * 0.1)
        bn.running_var.copy_(torch.rand(c) + 0.5)
        bn.num_batches_tracked.fill_(3)
    start = {k: v.clone() for k, v in bn.state_dict().items()}
    x = (torch.randn(*shape) * 2 + 0.7).requires_grad_()
    dy = torch.randn(*shape)
    bn.train(train)
    y = bn(x)
    out = {"name": name, "op": "BatchNorm", "train": train, "eps": eps, "momentum": momentum,
           "x": flat(x), "dy": flat(dy), "y": flat(y)}
    for k, v in start.items():
        out["in." + k] = flat(v.float())
    for k, v in bn.state_dict().items():
        out["after." + k] = flat(v.float())
    if train:
        (y * dy).sum().backward()
        out["dx"], out["dweight"], out["dbias"] = flat(x.grad), flat(bn.weight.grad), flat(bn.bias.grad)
    return out


def gap(name, shape):
    x = torch.randn(*shape).requires_grad_()
    y = F.adaptive_avg_pool2d(x, 1).flatten(1)
    dy = torch.randn(*y.shape)
    (y * dy).sum().backward()
    return {"name": name, "op": "GlobalAvgPool", "x": flat(x), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad)}


def avgpool(name, shape, k, stride):
    x = torch.randn(*shape).requires_grad_()
    y = F.avg_pool2d(x, k, stride)
    dy = torch.randn(*y.shape)
    (y * dy).sum().backward()
    return {"name": name, "op": "AvgPool2D", "kernel": k, "stride": stride, "x": flat(x), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad)}


def conv(name, xs, ws, stride, pad):
    x = torch.randn(*xs).requires_grad_()
    w = (torch.randn(*ws) * 0.3).requires_grad_()
    y = F.conv2d(x, w, None, stride=stride, padding=pad)
    dy = torch.randn(*y.shape)
    (y * dy).sum().backward()
    return {"name": name, "op": "Conv2D", "stride": stride, "pad": pad,
            "x": flat(x), "w": flat(w), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad), "dw": flat(w.grad)}


def act(name, fn):
    x = (torch.randn(5, 7) * 2).requires_grad_()
    y = fn(x)
    dy = torch.randn(*y.shape)
    (y * dy).sum().backward()
    return {"name": name, "op": name, "x": flat(x), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad)}


def ce(name, eps):
    x = (torch.randn(6, 5) * 3).requires_grad_()
    labels = torch.randint(0, 5, (6,))
    loss = F.cross_entropy(x, labels, label_smoothing=eps)
    loss.backward()
    return {"name": name, "op": "SoftmaxCrossEntropy", "smoothing": eps, "x": flat(x), "labels": flat(labels.float()),
            "dy": flat(torch.ones(1)), "y": flat(loss.reshape(1)), "dx": flat(x.grad)}


def layernorm(name, shape):
    d = shape[-1]
    ln = nn.LayerNorm(d)
    with torch.no_grad():
        ln.weight.copy_(torch.rand(d) + 0.5)
        ln.bias.copy_(torch.randn(d))
    x = (torch.randn(*shape) * 2 + 0.5).requires_grad_()
    y = ln(x)
    dy = torch.randn(*y.shape)
    (y * dy).sum().backward()
    return {"name": name, "op": "LayerNorm", "eps": 1e-5, "x": flat(x), "weight": flat(ln.weight), "bias": flat(ln.bias),
            "dy": flat(dy), "y": flat(y), "dx": flat(x.grad), "dweight": flat(ln.weight.grad), "dbias": flat(ln.bias.grad)}


cases = [
    act("GELU", F.gelu),
    act("SiLU", F.silu),
    ce("ce-smoothing-0.1", 0.1),
    ce("ce-smoothing-0", 0.0),
    layernorm("layernorm-2d", (6, 10)),
    layernorm("layernorm-3d", (3, 4, 8)),
    batchnorm("bn2d-train", (4, 3, 5, 6), True),
    batchnorm("bn2d-eval", (4, 3, 5, 6), False),
    batchnorm("bn1d-train", (9, 5), True, momentum=0.3),
    batchnorm("bn1d-eval", (9, 5), False),
    gap("gap", (3, 4, 5, 6)),
    conv("conv1x1-s2-nobias", (2, 4, 9, 8), (5, 4, 1, 1), 2, 0),
    conv("conv3x3-s2-p1-nobias", (2, 3, 9, 8), (4, 3, 3, 3), 2, 1),
    avgpool("avgpool-2", (2, 3, 7, 6), 2, 2),
    avgpool("avgpool-3-s2", (2, 3, 9, 8), 3, 2),
    avgpool("avgpool-3-s1", (1, 2, 5, 6), 3, 1),
    conv("conv3x3-s1-p1-wide", (2, 3, 13, 14), (5, 3, 3, 3), 1, 1),
]
print(json.dumps({"torch": torch.__version__, "cases": cases}))
