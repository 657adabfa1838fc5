#!/usr/bin/env python3
"""Accuracy benchmark: ResNet-20 on Fashion-MNIST, gotrain against PyTorch.

The recipe: ResNet-20 (graph/resnet.go; resnet.py here), Fashion-MNIST read
from PNG class folders, augmentation (pad 4 zeros, random 28x28 crop,
horizontal flip with probability 1/2, per sample and epoch), SGD with
momentum 0.9, weight decay 5e-4 (on every parameter, BatchNorm's included, as
both do for `parameters()`), cosine learning-rate schedule per optimiser step
from --lr to 0 over all the run's steps, batch 128 (the last, partial batch of
an epoch kept), a fixed number of epochs. In one run of this script:

  gotrain-folder-aug  gotrain train --dataset folder --augment
  pytorch-folder-aug  the same recipe in PyTorch, reading the same PNG files
                      in the same order (torch.set_num_threads(--threads))
  gotrain-idx-aug     gotrain train --dataset fashion-mnist --augment (the
                      IDX files, with the same crops and flips for the same
                      index): the like-for-like pair of gotrain-folder-aug
  gotrain-idx-folder-order-aug
                      gotrain-idx-aug on IDX files of the same images in the
                      folder's order (class by class), normalised by the
                      folder's constants (--mean, --std): every step sees the
                      bytes gotrain-folder-aug sees, so the two must end with
                      the same weights, bit for bit (the summary says whether
                      they do). gotrain-idx-aug's sample order is the IDX
                      file's, so the same shuffle picks other images: its
                      accuracy is another draw of the same recipe.
  gotrain-idx         gotrain train --dataset fashion-mnist without --augment
  gotrain-folder      gotrain train --dataset folder without --augment: the
                      like-for-like pair of gotrain-idx

and with --strict-load, gotrain-folder-aug's final checkpoint loaded into
resnet.ResNet with load_state_dict(strict=True) and evaluated in PyTorch on
the test folder with the normalisation the checkpoint records, beside
gotrain's own evaluation (its last epoch's and `gotrain eval`'s).

The data pipeline is gotrain's (trainer/data/folder.go, trainer/trainer.go):
class folders in sorted order are the labels, files sorted by name; each
channel is normalised by the training split's mean and (population)
deviation of p/255, computed in float64 and kept as float32, through a
256-entry table float32((p/255 - mean)/std); the test split by the training
split's constants; augmentation pads the raw bytes with zeros, i.e. the
padding takes the normalised value of a black pixel, (0 - mean)/std, as
torchvision's RandomCrop(28, padding=4) before ToTensor and Normalize does.
The draws differ (gotrain draws crops and flips from PCG streams keyed by
(seed, epoch, index), PyTorch from its generator), as do the shuffles and
the initial weights: the comparison is of two samples of the same recipe.
The IDX run normalises by gotrain's fixed Fashion-MNIST constants (0.2860,
0.3530), the folder runs by the statistics of the training folder.

--data-dir DIR holds DIR/train/<class>/*.png and DIR/test/<class>/*.png; if
it has neither, they are written from the IDX files (Debian's
dataset-fashion-mnist), as gotrain's data.WriteImageFolder writes them
(classes 0..9, files NNNNNN.png named by the index in the IDX file, 8-bit
grayscale). --train-subset N trains every run on the first N images of each
class (by name, which is IDX order): hard links in a scratch folder, and
IDX files of the same images for gotrain-idx; the test split stays whole.

PIL is not needed: PNGs are written and read here with zlib (8-bit gray,
RGB and RGBA, non-interlaced).

Usage: resnet_accuracy.py GOTRAIN_BIN [--epochs 1] [--lr 0.1] [--threads 2]
       [--data-dir DIR] [--train-subset N] [--strict-load] [--runs ...]
Run with Debian's python3-torch (/usr/bin/python3).
"""
import argparse
import gzip
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from resnet import ResNet  # noqa: E402

IDX_DIR = "/usr/share/datasets/fashion-mnist"
RUNS = ["gotrain-folder-aug", "pytorch-folder-aug", "gotrain-idx-aug", "gotrain-idx-folder-order-aug", "gotrain-idx",
        "gotrain-folder"]


# ---------------------------------------------------------------- IDX files

def read_idx(path):
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        b = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", b[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, b[4:4 + 4 * ndim])
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path, arr):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def idx_file(d, base):
    for name in (base + ".gz", base):
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise FileNotFoundError(f"neither {base} nor {base}.gz is in {d}")


def load_idx_split(d, split):
    prefix = "train" if split == "train" else "t10k"
    return (read_idx(idx_file(d, prefix + "-images-idx3-ubyte")),
            read_idx(idx_file(d, prefix + "-labels-idx1-ubyte")))


# ---------------------------------------------------------------- PNG files

def png_gray(img):
    """An 8-bit grayscale PNG of img [H, W] uint8 (filter 0 on every row)."""
    h, w = img.shape
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_folder(dir_, images, labels):
    """gotrain's data.WriteImageFolder: dir/<class>/<index:06d>.png."""
    classes = int(labels.max()) + 1
    width = len(str(max(classes - 1, 0)))
    for c in range(classes):
        os.makedirs(os.path.join(dir_, f"{c:0{width}d}"), exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels)):
        with open(os.path.join(dir_, f"{int(y):0{width}d}", f"{i:06d}.png"), "wb") as f:
            f.write(png_gray(img))


def png_payload(path):
    """(width, height, channels, decompressed filtered scanlines) of a PNG."""
    b = open(path, "rb").read()
    if not b.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file (JPEG folders are not read here)")
    pos, idat, hdr = 8, [], None
    while pos < len(b):
        n, kind = struct.unpack(">I4s", b[pos:pos + 8])
        data = b[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat.append(data)
        elif kind == b"IEND":
            break
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    chans = {0: 1, 2: 3, 6: 4}.get(ctype)
    if depth != 8 or chans is None or interlace:
        raise ValueError(f"{path}: PNG of bit depth {depth}, colour type {ctype}, interlace {interlace}: "
                         "only 8-bit gray, RGB and RGBA without interlacing are read here")
    return w, h, chans, zlib.decompress(b"".join(idat))


def unfilter(raw, h, w, bpp):
    """PNG filters undone for N images at once: raw [N, H, 1 + W*bpp] -> [N, H, W*bpp]."""
    n, stride = raw.shape[0], w * bpp
    out = np.zeros((n, h, stride), dtype=np.int32)
    prev = np.zeros((n, stride), dtype=np.int32)
    for r in range(h):
        ft = raw[:, r, 0].astype(np.int32)
        line = raw[:, r, 1:].astype(np.int32)
        cur = np.zeros((n, stride), dtype=np.int32)
        if np.all(ft == 0):
            cur = line
        elif np.all(ft == 2):
            cur = (line + prev) & 0xff
        else:
            for x in range(stride):
                a = cur[:, x - bpp] if x >= bpp else np.zeros(n, np.int32)
                bb = prev[:, x]
                c = prev[:, x - bpp] if x >= bpp else np.zeros(n, np.int32)
                p = a + bb - c
                pa, pb, pc = np.abs(p - a), np.abs(p - bb), np.abs(p - c)
                paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, bb, c))
                pred = np.select([ft == 0, ft == 1, ft == 2, ft == 3, ft == 4],
                                 [0, a, bb, (a + bb) >> 1, paeth], 0)
                cur[:, x] = (line[:, x] + pred) & 0xff
        out[:, r] = cur
        prev = cur
    return out.astype(np.uint8)


def load_folder(dir_):
    """A split laid out as gotrain's --dataset folder reads it: (pixels [N,C,H,W]
    uint8, labels [N], class names, relative file names), in gotrain's order."""
    classes = sorted(e.name for e in os.scandir(dir_) if e.is_dir())
    files, labels = [], []
    for k, c in enumerate(classes):
        names = sorted(e.name for e in os.scandir(os.path.join(dir_, c))
                       if e.is_file(follow_symlinks=False) and not e.name.startswith("."))
        files += [os.path.join(c, n) for n in names]
        labels += [k] * len(names)
    payloads, shape = [], None
    for f in files:
        w, h, ch, raw = png_payload(os.path.join(dir_, f))
        if shape is None:
            shape = (w, h, ch)
        elif (w, h, ch) != shape:
            raise ValueError(f"{f}: {w}x{h}x{ch}, the folder's first image is {shape}")
        payloads.append(raw)
    w, h, ch = shape
    raw = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(len(files), h, 1 + w * ch)
    pix = unfilter(raw, h, w, ch).reshape(len(files), h, w, ch)
    if ch == 4:
        # gotrain takes the colour of RGBA.RGBA(), alpha-premultiplied; opaque
        # images (all of them here) are unchanged.
        pix = pix[..., :3]
    pix = np.ascontiguousarray(pix.transpose(0, 3, 1, 2))
    return pix, np.array(labels, dtype=np.int64), classes, files


# ---------------------------------------------------------- normalisation

def standardize(pix):
    """gotrain's Folder.Standardize: per channel mean and population deviation
    of p/255 in float64, kept as float32."""
    mean, std = [], []
    for c in range(pix.shape[1]):
        v = pix[:, c].astype(np.float64).ravel() / 255
        m = v.sum() / v.size
        sd = math.sqrt(max((v * v).sum() / v.size - m * m, 0)) or 1.0
        mean.append(np.float32(m))
        std.append(np.float32(sd))
    return mean, std


def norm_lut(mean, std):
    """Folder.SetNorm's table: float32((p/255 - mean)/std), per channel [C, 256]."""
    p = np.arange(256, dtype=np.float64) / 255
    return torch.tensor(np.stack([((p - float(m)) / float(s)).astype(np.float32) for m, s in zip(mean, std)]))


def normalise(pix, lut):
    """pix [N,C,H,W] uint8 (a tensor) through the per-channel table."""
    c = torch.arange(pix.shape[1]).view(1, -1, 1, 1)
    return lut[c, pix.long()]


def augment_batch(padded, idx, pad, h, w, gen, lut):
    """Random crop of the zero-padded bytes (dy, dx uniform in [0, 2·pad]) and a
    flip with probability 1/2, per sample, then the normalisation table: the
    padding is a black pixel's normalised value, as in gotrain's Fill."""
    n = len(idx)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen).bool()
    rows = dy[:, None] + torch.arange(h)[None, :]                       # [n, H]
    cols = torch.arange(w)[None, :].expand(n, w).clone()
    cols[flip] = cols[flip].flip(1)
    cols = cols + dx[:, None]                                           # [n, W]
    ch = padded.shape[1]
    b = padded[idx[:, None, None, None], torch.arange(ch)[None, :, None, None],
               rows[:, None, :, None], cols[:, None, None, :]]
    return normalise(b, lut)


# ------------------------------------------------------------------ PyTorch

def torch_train(a, train_pix, train_y, test_pix, test_y, ncls, log):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    t_start = time.perf_counter()
    mean, std = standardize(train_pix)
    lut = norm_lut(mean, std)
    n, ch, h, w = train_pix.shape
    p = a.pad
    padded = torch.zeros((n, ch, h + 2 * p, w + 2 * p), dtype=torch.uint8)
    padded[:, :, p:p + h, p:p + w] = torch.from_numpy(train_pix)
    ytr = torch.from_numpy(train_y)
    xte = normalise(torch.from_numpy(test_pix), lut)
    yte = torch.from_numpy(test_y)
    model = ResNet(20, ch, ncls)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    nb = (n + a.batch_size - 1) // a.batch_size
    total = a.epochs * nb

    def lr_at(step):  # optim.Schedule "cosine", no warm-up, min_lr 0
        return 0 + (a.lr - 0) * (1 + math.cos(math.pi * step / total)) / 2 if step < total else 0.0

    def evaluate():
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, len(yte), 250):
                out = model(xte[i:i + 250])
                loss += F.cross_entropy(out, yte[i:i + 250], reduction="sum").item()
                correct += (out.argmax(1) == yte[i:i + 250]).sum().item()
        model.train()
        return correct / len(yte), loss / len(yte)

    step, evals, train_time = 0, [], 0.0
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum = 0.0
        for b in range(nb):
            idx = perm[b * a.batch_size:(b + 1) * a.batch_size]
            x = augment_batch(padded, idx, p, h, w, gen, lut)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), ytr[idx])
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"pytorch diverged at step {step}: loss {loss.item()}")
        train_time += time.perf_counter() - t0
        acc, tl = evaluate()
        evals.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "test_accuracy": acc, "test_loss": tl})
        log(f"pytorch epoch {epoch + 1}: train loss {loss_sum / n:.4f}, test accuracy {100 * acc:.2f}%")
    return {"test_accuracy": evals[-1]["test_accuracy"], "test_loss": evals[-1]["test_loss"], "steps": step,
            "evals": evals, "train_seconds": train_time, "samples_per_sec": n * a.epochs / train_time,
            "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "seconds_in_process": time.perf_counter() - t_start}


# ------------------------------------------------------------------ gotrain

ACC_RE = re.compile(r"test accuracy ([0-9.]+)% \(test loss ([0-9.eE+-]+|NaN)\) after (\d+) steps; ([0-9.]+) samples/s; ([0-9.]+)s")


def gotrain_train(a, name, dataset, data_dir, augment, work, log, extra=()):
    ck = os.path.join(work, name + "-ckpt")
    metrics = os.path.join(work, name + ".jsonl")
    out = os.path.join(work, name + ".safetensors")
    cmd = [a.gotrain, "train", "--model", "resnet", "--depth", "20", "--dataset", dataset, "--data-dir", data_dir,
           "--optimizer", "sgd", "--momentum", str(a.momentum), "--weight-decay", str(a.weight_decay),
           "--schedule", "cosine", "--lr", str(a.lr), "--batch-size", str(a.batch_size), "--epochs", str(a.epochs),
           "--threads", str(a.threads), "--device", "cpu", "--seed", str(a.seed),
           "--checkpoint-dir", ck, "--metrics-file", metrics, "--out", out]
    if dataset == "folder":
        cmd += ["--data-workers", str(a.threads)]
    if augment:
        cmd += ["--augment", "--pad", str(a.pad)]
    cmd += list(extra)
    log("$ " + " ".join(cmd))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{name}: gotrain exited {r.returncode}\n$ {' '.join(cmd)}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}")
    m = ACC_RE.search(r.stdout)
    if not m:
        raise RuntimeError(f"{name}: no test accuracy in gotrain's output:\n{r.stdout}\n{r.stderr[-4000:]}")
    evals = []
    with open(metrics) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                evals.append({"epoch": rec.get("epoch"), "test_accuracy": rec.get("test_accuracy"),
                              "test_loss": rec.get("test_loss")})
    for e in evals:
        log(f"{name} epoch {e['epoch']}: test accuracy {100 * e['test_accuracy']:.2f}%")
    return {"test_accuracy": float(m.group(1)) / 100, "test_loss": float(m.group(2)), "steps": int(m.group(3)),
            "samples_per_sec": float(m.group(4)), "gotrain_seconds": float(m.group(5)), "wall_seconds": wall,
            "evals": evals, "checkpoint_dir": ck, "weights": out, "command": cmd, "stdout": r.stdout.strip()}


# ----------------------------------------------------------- strict loading

def load_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    meta = h.pop("__metadata__", {})
    d = b[8 + n:]
    out, dtypes = {}, {}
    for k, v in h.items():
        if v["dtype"] != "F32":
            raise ValueError(f"{path}: {k} is {v['dtype']}, not F32")
        s, e = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(d[s:e], dtype=np.float32).copy().reshape(v["shape"]))
        dtypes[k] = v["dtype"]
    return out, meta


def newest_checkpoint(d):
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors in {d}")
    return os.path.join(d, files[-1])


def strict_load(a, run, test_pix, test_y, ncls, log):
    path = newest_checkpoint(run["checkpoint_dir"])
    tensors, meta = load_safetensors(path)
    # A checkpoint also holds the optimiser's state (optimizer.*): the model is the rest.
    sd = {k: v for k, v in tensors.items() if not k.startswith("optimizer.")}
    nbt = {k: (tuple(v.shape), float(v.reshape(-1)[0])) for k, v in sd.items() if k.endswith("num_batches_tracked")}
    model = ResNet(20, test_pix.shape[1], ncls)
    model.load_state_dict(sd, strict=True)
    model.eval()
    loaded_nbt = {k: (str(v.dtype), tuple(v.shape), int(v)) for k, v in model.state_dict().items()
                  if k.endswith("num_batches_tracked")}
    k0 = sorted(nbt)[0]
    log(f"strict load of {path}: {len(sd)} tensors ({len(tensors) - len(sd)} optimizer.* left out); "
        f"{k0}: file float32{list(nbt[k0][0])} = {nbt[k0][1]:g} -> module {loaded_nbt[k0][0]} shape {list(loaded_nbt[k0][1])} = {loaded_nbt[k0][2]}")
    mean = [float(v) for v in meta["data.mean"].split(",")]
    std = [float(v) for v in meta["data.std"].split(",")]
    x = normalise(torch.from_numpy(test_pix), norm_lut(np.float32(mean), np.float32(std)))
    y = torch.from_numpy(test_y)
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), 250):
            out = model(x[i:i + 250])
            loss += F.cross_entropy(out, y[i:i + 250], reduction="sum").item()
            correct += (out.argmax(1) == y[i:i + 250]).sum().item()
    acc, loss = correct / len(y), loss / len(y)
    # gotrain's own evaluation of the same file.
    cmd = [a.gotrain, "eval", "--checkpoint", path, "--threads", str(a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"accuracy ([0-9.]+)%, loss ([0-9.eE+-]+)", r.stdout)
    gacc, gloss = (float(m.group(1)) / 100, float(m.group(2))) if (r.returncode == 0 and m) else (None, None)
    if gacc is None:
        log(f"gotrain eval failed ({r.returncode}): {r.stdout}{r.stderr[-2000:]}")
    # The --out weights file holds the same model tensors as the last checkpoint.
    same = None
    if os.path.exists(run["weights"]):
        w, _ = load_safetensors(run["weights"])
        same = set(w) == set(sd) and all(torch.equal(w[k], sd[k]) for k in sd)
    return {"checkpoint": path, "strict": True, "tensors": len(sd), "optimizer_tensors_left_out": len(tensors) - len(sd),
            "num_batches_tracked_file": {"dtype": "F32", "shape": list(nbt[k0][0]), "value": nbt[k0][1]},
            "num_batches_tracked_loaded": {"dtype": loaded_nbt[k0][0], "shape": list(loaded_nbt[k0][1]), "value": loaded_nbt[k0][2]},
            "all_num_batches_tracked_equal_steps": all(v[2] == run["steps"] for v in loaded_nbt.values()),
            "mean": mean, "std": std, "pytorch_test_accuracy": acc, "pytorch_test_loss": loss,
            "gotrain_eval_accuracy": gacc, "gotrain_eval_loss": gloss,
            "gotrain_eval_output": r.stdout.strip(), "gotrain_train_final_accuracy": run["test_accuracy"],
            "out_file_equals_checkpoint": same}


# -------------------------------------------------------------------- data

def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def prepare(a, work, log):
    """The PNG folders (written if absent), and with --train-subset the scratch
    folder and IDX files of the first N images per class."""
    dd = a.data_dir
    if not (os.path.isdir(os.path.join(dd, "train")) and os.path.isdir(os.path.join(dd, "test"))):
        log(f"writing Fashion-MNIST from {a.idx_dir} as PNG folders in {dd}")
        t0 = time.perf_counter()
        for split in ("train", "test"):
            tmp = os.path.join(dd, split + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            write_folder(tmp, *load_idx_split(a.idx_dir, split))
            os.replace(tmp, os.path.join(dd, split))
        log(f"written in {time.perf_counter() - t0:.1f}s")
    folder, idx = dd, a.idx_dir
    if a.train_subset:
        folder = os.path.join(work, f"folder-sub{a.train_subset}")
        os.makedirs(os.path.join(folder, "train"))
        os.symlink(os.path.abspath(os.path.join(dd, "test")), os.path.join(folder, "test"))
        src = os.path.join(dd, "train")
        for c in sorted(e.name for e in os.scandir(src) if e.is_dir()):
            os.makedirs(os.path.join(folder, "train", c))
            names = sorted(e.name for e in os.scandir(os.path.join(src, c)) if e.is_file() and not e.name.startswith("."))
            for n in names[:a.train_subset]:
                link_or_copy(os.path.join(src, c, n), os.path.join(folder, "train", c, n))
        # IDX files of the same images, in IDX order (the folder names are IDX indices).
        idx = os.path.join(work, f"idx-sub{a.train_subset}")
        os.makedirs(idx)
        x, y = load_idx_split(a.idx_dir, "train")
        keep = np.concatenate([np.flatnonzero(y == c)[:a.train_subset] for c in range(int(y.max()) + 1)])
        keep.sort()
        write_idx(os.path.join(idx, "train-images-idx3-ubyte"), x[keep])
        write_idx(os.path.join(idx, "train-labels-idx1-ubyte"), y[keep])
        for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            f = idx_file(a.idx_dir, base)
            os.symlink(f, os.path.join(idx, os.path.basename(f)))
    return folder, idx


def check_against_idx(a, pix, labels, classes, files, split, log):
    """The PNG pixels and labels against the IDX files, where the file names are
    IDX indices (as written here or by data.WriteImageFolder)."""
    try:
        ix = np.array([int(os.path.splitext(os.path.basename(f))[0]) for f in files])
        x, y = load_idx_split(a.idx_dir, split)
        ok = (pix.shape[1] == 1 and np.array_equal(pix[:, 0], x[ix])
              and np.array_equal(np.array([int(classes[k]) for k in labels]), y[ix]))
    except (ValueError, IndexError):
        ok = None
    log(f"{split}: {len(files)} PNG images, {pix.shape[1]}x{pix.shape[2]}x{pix.shape[3]}; "
        f"pixels and labels equal the IDX file's: {ok}")
    return ok


def idx_in_folder_order(a, files, work):
    """IDX files of the training images in the folder's order (the file names
    are IDX indices), the test split linked as it is."""
    d = os.path.join(work, "idx-folder-order")
    os.makedirs(d, exist_ok=True)
    ix = np.array([int(os.path.splitext(os.path.basename(f))[0]) for f in files])
    x, y = load_idx_split(a.idx_dir, "train")
    write_idx(os.path.join(d, "train-images-idx3-ubyte"), x[ix])
    write_idx(os.path.join(d, "train-labels-idx1-ubyte"), y[ix])
    for base in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        f = idx_file(a.idx_dir, base)
        dst = os.path.join(d, os.path.basename(f))
        if not os.path.lexists(dst):
            os.symlink(f, dst)
    return d


def same_weights(p, q):
    """Whether two weights files hold the same tensors, bit for bit."""
    wp, _ = load_safetensors(p)
    wq, _ = load_safetensors(q)
    return wp.keys() == wq.keys() and all(torch.equal(wp[k], wq[k]) for k in wp)


# -------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gotrain")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--pad", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "fashion-mnist-png"),
                    help="PNG folders train/ and test/ (written from --idx-dir if absent)")
    ap.add_argument("--idx-dir", default=IDX_DIR, help="Fashion-MNIST IDX files")
    ap.add_argument("--train-subset", type=int, default=0, help="train on the first N images of each class (0: all)")
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ",".join(RUNS))
    ap.add_argument("--strict-load", action="store_true",
                    help="load gotrain-folder-aug's checkpoint into resnet.ResNet (strict=True) and evaluate it in PyTorch")
    ap.add_argument("--work-dir", default="", help="checkpoints, metrics and subsets (default: a new temporary folder)")
    ap.add_argument("--json", default="", help="also write the JSON summary to this file")
    a = ap.parse_args()
    runs = [r for r in a.runs.split(",") if r]
    bad = [r for r in runs if r not in RUNS]
    if bad:
        ap.error(f"--runs: unknown {','.join(bad)}")
    if a.strict_load and "gotrain-folder-aug" not in runs:
        ap.error("--strict-load loads gotrain-folder-aug's checkpoint: keep that run")

    def log(s):
        print(s, file=sys.stderr, flush=True)

    work = a.work_dir or tempfile.mkdtemp(prefix="resnet-accuracy-")
    os.makedirs(work, exist_ok=True)
    folder, idx = prepare(a, work, log)
    t0 = time.perf_counter()
    train_pix, train_y, classes, train_files = load_folder(os.path.join(folder, "train"))
    test_pix, test_y, test_classes, test_files = load_folder(os.path.join(folder, "test"))
    decode_s = time.perf_counter() - t0
    log(f"decoded the PNG folders in {decode_s:.1f}s")
    if test_classes != classes:
        raise SystemExit(f"the test classes {test_classes} are not the training classes {classes}")
    png_equals_idx = {s: check_against_idx(a, p, y, classes, f, s, log)
                      for s, p, y, f in (("train", train_pix, train_y, train_files), ("test", test_pix, test_y, test_files))}
    ncls = len(classes)

    results = {}
    for r in runs:
        log(f"--- {r}")
        if r == "pytorch-folder-aug":
            t = time.perf_counter()
            res = torch_train(a, train_pix, train_y, test_pix, test_y, ncls, log)
            res["wall_seconds"] = time.perf_counter() - t + decode_s  # its data loading: the PNG decoding above
        elif r == "gotrain-idx-folder-order-aug":
            mean, std = standardize(train_pix)  # the folder's constants (checked against its checkpoint below)
            extra = ["--mean", ",".join("%.9g" % m for m in mean), "--std", ",".join("%.9g" % v for v in std)]
            res = gotrain_train(a, r, "fashion-mnist", idx_in_folder_order(a, train_files, work), True, work, log, extra)
        else:
            dataset, data_dir = ("fashion-mnist", idx) if r.startswith("gotrain-idx") else ("folder", folder)
            res = gotrain_train(a, r, dataset, data_dir, r.endswith("-aug"), work, log)
        res["augment"] = r.endswith("-aug")
        res["data"] = "PNG folders" if not r.startswith("gotrain-idx") else (
            "IDX files, the folder's order and constants" if r == "gotrain-idx-folder-order-aug" else "IDX files")
        results[r] = res
        log(f"{r}: test accuracy {100 * res['test_accuracy']:.2f}% in {res['wall_seconds']:.1f}s")

    if "gotrain-folder-aug" in results:
        ck = newest_checkpoint(results["gotrain-folder-aug"]["checkpoint_dir"])
        _, meta = load_safetensors(ck)
        g_mean = [float(v) for v in meta["data.mean"].split(",")]
        g_std = [float(v) for v in meta["data.std"].split(",")]
        mine_mean, mine_std = standardize(train_pix)
        results["gotrain-folder-aug"]["mean"], results["gotrain-folder-aug"]["std"] = g_mean, g_std
        # The checkpoint prints float32s in their shortest form: equal as float32s.
        results["gotrain-folder-aug"]["normalisation_equals_pytorch"] = bool(
            np.array_equal(np.float32(g_mean), np.float32(mine_mean)) and np.array_equal(np.float32(g_std), np.float32(mine_std)))
        log(f"normalisation: gotrain's checkpoint mean {g_mean} std {g_std}; here mean {[float(m) for m in mine_mean]} "
            f"std {[float(s) for s in mine_std]}")
    if "gotrain-folder-aug" in results and "gotrain-idx-folder-order-aug" in results:
        same = same_weights(results["gotrain-folder-aug"]["weights"], results["gotrain-idx-folder-order-aug"]["weights"])
        results["gotrain-idx-folder-order-aug"]["same_weights_as_folder"] = same
        log(f"gotrain-idx-folder-order-aug ends with gotrain-folder-aug's weights, bit for bit: {same}")
    strict = strict_load(a, results["gotrain-folder-aug"], test_pix, test_y, ncls, log) if a.strict_load else None

    n_train = len(train_y)
    summary = {"recipe": {"model": "resnet20", "optimizer": "sgd", "momentum": a.momentum, "weight_decay": a.weight_decay,
                          "schedule": "cosine per step, min lr 0, no warm-up", "lr": a.lr, "batch_size": a.batch_size,
                          "epochs": a.epochs, "augment": f"pad {a.pad} zeros, random crop, horizontal flip p=0.5",
                          "threads": a.threads, "seed": a.seed},
               "train_samples": n_train, "test_samples": len(test_y), "train_subset_per_class": a.train_subset or None,
               "data_dir": folder, "idx_dir": idx, "png_equals_idx": png_equals_idx, "torch": torch.__version__,
               "work_dir": work,
               "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("stdout",)} for k, v in results.items()},
               "strict_load": strict}
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print()
    print(f"ResNet-20, Fashion-MNIST ({n_train} training images{f', first {a.train_subset} per class' if a.train_subset else ''}, "
          f"{len(test_y)} test), SGD momentum {a.momentum}, weight decay {a.weight_decay}, cosine from lr {a.lr}, "
          f"batch {a.batch_size}, {a.threads} threads, seed {a.seed}")
    print()
    print("| run | data | augmentation | epochs | steps | test accuracy | test loss | samples/s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v['data']} | {'yes' if v['augment'] else 'no'} | {a.epochs} | {v['steps']} | {100 * v['test_accuracy']:.2f}% "
              f"| {v['test_loss']:.4f} | {v['samples_per_sec']:.0f} | {v['wall_seconds']:.1f} |")
    if "same_weights_as_folder" in results.get("gotrain-idx-folder-order-aug", {}):
        print(f"| gotrain-idx-folder-order-aug's weights equal gotrain-folder-aug's bit for bit: "
              f"{results['gotrain-idx-folder-order-aug']['same_weights_as_folder']} | | | | | | | | |")
    if strict:
        print(f"| gotrain-folder-aug's checkpoint, load_state_dict(strict=True), PyTorch eval | PNG folders | | | "
              f"| {100 * strict['pytorch_test_accuracy']:.2f}% (gotrain eval: "
              f"{'%.2f%%' % (100 * strict['gotrain_eval_accuracy']) if strict['gotrain_eval_accuracy'] is not None else 'failed'}) "
              f"| {strict['pytorch_test_loss']:.4f} (gotrain eval: {strict['gotrain_eval_loss']}) | | |")


if __name__ == "__main__":
    main()
