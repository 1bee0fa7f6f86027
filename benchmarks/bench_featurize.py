"""Featurizer throughput against a naive loop and the best hand-written loop.

On the same inputs (real photo crops, 256x256 uint8, preprocessed to 224 px
with the torchvision recipe: resize 256, centre crop 224, ImageNet
normalisation), in one run, interleaved so that machine noise hits every
method alike:

- naive: the tutorial loop: per-image PIL transforms (Resize, CenterCrop,
  ToTensor, Normalize), fp32, contiguous memory, ``torch.no_grad``;
- best: the fastest loop we can write by hand for this machine: batched tensor
  preprocessing, BatchNorm folded into the convolutions, channels_last,
  ``inference_mode``, and the autocast dtype the machine computes natively
  (none on a CPU without bf16);
- ours: ``PretrainedCNNFeaturizer.transform`` with its defaults;
- with ``--compile``, also both of the last two under ``torch.compile``
  (inductor, freezing), compile time excluded and reported apart;
- with ``--backends`` instead, the inference backends side by side, from
  arrays and from JPEG files: a hand-written torch eager loop (the best loop
  in fp32), a hand-written ONNX Runtime loop (the same network exported, the
  same preprocessing), ``transform`` with ``backend="auto"`` (ONNX Runtime on
  the CPU), and ``transform`` with ``precision="int8"``.

Reports images/second, ours/best and ours/naive, and the best loop's GMAC/s
against the CPU's peak fp32 multiply-add rate.

    python benchmarks/bench_featurize.py --write benchmarks/results/featurize.md
    python benchmarks/bench_featurize.py --backends --models mobilenet_v2 resnet50 efficientnet_b0 \
        --n-images 32 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from torchvision import transforms
from torchvision.models import get_model, get_model_weights
from torchvision.transforms.v2 import functional as TF

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.runtime.device import cpu_has_native_bf16, resolve_device, resolve_precision


def real_crops(n: int, side: int = 256) -> np.ndarray:
    """``n`` real photo crops (scikit-learn's sample photos), uint8 ``(n, side, side, 3)``."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crops.append(photo[top : top + side, left : left + side])
    return np.ascontiguousarray(np.stack(crops))


def embedding_network(name: str, fold: bool = False) -> torch.nn.Module:
    """The torchvision network with its classifier removed: outputs the pooled embedding."""
    from torch.fx.experimental.optimization import fuse

    network = get_model(name, weights=None).eval()
    if hasattr(network, "fc"):
        network.fc = torch.nn.Identity()
    else:
        network.classifier = torch.nn.Identity()
    return fuse(network) if fold else network  # torch.fx's conv-BN folding


def naive_loop(network, X, batch_size, device):
    preprocess = transforms.Compose(
        [
            transforms.ToPILImage(),
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    network = network.to(device)
    out = []
    with torch.no_grad():
        for start in range(0, len(X), batch_size):
            batch = torch.stack([preprocess(image) for image in X[start : start + batch_size]]).to(device)
            out.append(network(batch).cpu())
    return torch.cat(out).numpy()


def best_loop(network, X, batch_size, device, dtype):
    network = network.to(device).to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    images = torch.from_numpy(X).permute(0, 3, 1, 2)
    out = []
    enabled = dtype is not None
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=enabled)
    with torch.inference_mode(), autocast:
        for start in range(0, len(X), batch_size):
            batch = images[start : start + batch_size]
            if min(batch.shape[-2:]) != 256:
                batch = TF.resize(batch, 256, antialias=True)
            batch = TF.center_crop(batch, [224, 224]).to(device, non_blocking=True)
            batch = ((batch.float() / 255.0 - mean) / std).contiguous(memory_format=torch.channels_last)
            out.append(network(batch).float().cpu())
    return torch.cat(out).numpy()


def read_files(paths) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def onnx_loop(session, X, batch_size, read=None):
    """The hand-written ONNX Runtime loop: decode, resize, crop and normalise with torch, run the session."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    name = session.get_inputs()[0].name
    out = []
    for start in range(0, len(X), batch_size):
        chunk = X[start : start + batch_size]
        batch = torch.from_numpy(read(chunk) if read else chunk).permute(0, 3, 1, 2)
        if min(batch.shape[-2:]) != 256:
            batch = TF.resize(batch, 256, antialias=True)
        batch = (TF.center_crop(batch, [224, 224]).float() / 255.0 - mean) / std
        out.append(session.run(None, {name: batch.numpy()})[0])
    return np.concatenate(out)


def backends_table(args, X) -> str:
    import tempfile

    from PIL import Image

    from sklearn_tl.runtime.onnx import export_module, make_session

    folder = tempfile.mkdtemp()
    paths = []
    for i, image in enumerate(X):
        paths.append(os.path.join(folder, f"{i}.jpg"))
        Image.fromarray(image).save(paths[-1], quality=90)
    paths = np.asarray(paths)
    lines = [
        f"### Inference backends on the CPU ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)",
        "",
        f"{len(X)} real 256x256 photo crops → 224 px, batch size {args.batch_size}, weights=None, best of "
        f"{args.repeats} interleaved repeats; img/s.",
        "",
        "| model | input | torch eager loop | ONNX Runtime loop | transform auto | transform int8 | "
        "auto / ORT loop | auto / torch | int8 / auto |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cpu = torch.device("cpu")
    for name in args.models:
        folded = embedding_network(name, fold=True)
        session = make_session(export_module(folded, torch.rand(2, 3, 224, 224)))
        common = dict(weights=None, batch_size=args.batch_size, device="cpu", progress=False)
        auto = PretrainedCNNFeaturizer(name, **common).fit(X[:1])
        int8 = PretrainedCNNFeaturizer(name, precision="int8", **common).fit(X)
        for kind, data, read in [("arrays", X, None), ("JPEG files", paths, read_files)]:
            methods = {
                "torch": lambda: best_loop(folded, read(data) if read else data, args.batch_size, cpu, None),
                "ort": lambda: onnx_loop(session, data, args.batch_size, read),
                "auto": lambda: auto.transform(data),
                "int8": lambda: int8.transform(data),
            }
            for fn in methods.values():  # warm-up: export, quantization, thread pools
                fn()
            times = {key: [] for key in methods}
            for _ in range(args.repeats):
                for key, fn in methods.items():
                    times[key].append(timed(fn, cpu)[0])
            rate = {key: len(X) / min(values) for key, values in times.items()}
            lines.append(
                f"| {name} | {kind} | {rate['torch']:.1f} | {rate['ort']:.1f} | {rate['auto']:.1f} | "
                f"{rate['int8']:.1f} | {rate['auto'] / rate['ort']:.2f} | {rate['auto'] / rate['torch']:.2f} | "
                f"{rate['int8'] / rate['auto']:.2f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines + [""])


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def cpu_peak_gmacs() -> tuple[float, str]:
    """Peak fp32 multiply-adds per second of this CPU, from its vector width and clock."""
    flags, mhz = "", 0.0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                elif line.startswith("cpu MHz") and not mhz:
                    mhz = float(line.split(":")[1])
    except OSError:
        return float("nan"), "unknown CPU"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2  # two FMA pipes per core on current x86 server cores
    cores = os.cpu_count() or 1
    peak = cores * fma_units * lanes * mhz / 1000.0
    return peak, f"{cores} cores x {fma_units} FMA x {lanes} fp32 lanes x {mhz / 1000:.2f} GHz"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile variants")
    parser.add_argument("--backends", action="store_true", help="compare the inference backends instead")
    parser.add_argument("--write", default=None, help="append a Markdown table to this file")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = resolve_precision("auto", device)
    X = real_crops(args.n_images)
    if args.backends:
        emit(backends_table(args, X), args.write)
        return
    lines = [
        f"### Featurizer throughput on {device.type} ({platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, native CPU bf16: {cpu_has_native_bf16()}, auto precision: {dtype})",
        "",
        f"{args.n_images} real 256x256 photo crops → 224 px, batch size {args.batch_size}, best of "
        f"{args.repeats} interleaved repeats.",
        "",
        "| model | naive img/s | best loop img/s | ours img/s | ours / best | ours / naive | best GMAC/s | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    peak, peak_how = cpu_peak_gmacs() if device.type == "cpu" else (float("nan"), "GPU")
    compiled_lines = []
    for name in args.models:
        network = embedding_network(name)
        folded = embedding_network(name, fold=True)
        featurizer = PretrainedCNNFeaturizer(name, weights=None, batch_size=args.batch_size, device=device.type,
                                             progress=False).fit(X[:1])
        methods = {
            "naive": lambda: naive_loop(network, X, args.batch_size, device),
            "best": lambda: best_loop(folded, X, args.batch_size, device, dtype),
            "ours": lambda: featurizer.transform(X),
        }
        if args.compile:
            compiled_net = torch.compile(folded.to(memory_format=torch.channels_last), dynamic=False,
                                         options={"freezing": True})
            compiled_ours = PretrainedCNNFeaturizer(name, weights=None, batch_size=args.batch_size,
                                                    device=device.type, progress=False, compile=True).fit(X[:1])
            methods["best compiled"] = lambda: best_loop(compiled_net, X, args.batch_size, device, dtype)
            methods["ours compiled"] = lambda: compiled_ours.transform(X)
        compile_seconds = {}
        for key, fn in methods.items():  # warm-up: kernels, thread pools, memory layout, compilation
            compile_seconds[key] = timed(fn, device)[0]
        times = {key: [] for key in methods}
        for _ in range(args.repeats):
            for key, fn in methods.items():
                times[key].append(timed(fn, device)[0])
        rate = {key: args.n_images / min(values) for key, values in times.items()}
        macs = get_model_weights(name).DEFAULT.meta["_ops"]  # GMACs per image at 224 px (torchvision's count)
        achieved = rate["best"] * macs
        lines.append(
            f"| {name} | {rate['naive']:.1f} | {rate['best']:.1f} | {rate['ours']:.1f} | "
            f"{rate['ours'] / rate['best']:.2f} | {rate['ours'] / rate['naive']:.2f} | {achieved:.1f} | "
            f"{achieved / peak:.0%} |"
        )
        spread = {key: f"{statistics.median(v):.2f}s median" for key, v in times.items()}
        print(name, spread, flush=True)
        if args.compile:
            compiled_lines.append(
                f"| {name} | {rate['best compiled']:.1f} | {rate['ours compiled']:.1f} | "
                f"{rate['ours compiled'] / rate['best compiled']:.2f} | {rate['ours compiled'] / rate['ours']:.2f} | "
                f"{compile_seconds['ours compiled']:.0f} |"
            )
    lines += ["", f"Peak: {peak:.0f} GMAC/s fp32 ({peak_how})." if peak == peak else "", ""]
    if compiled_lines:
        lines += [
            "With `torch.compile` (inductor, freezing):",
            "",
            "| model | best compiled img/s | ours compile=True img/s | ours / best | compile=True vs default "
            "| first call (s) |",
            "|---|---:|---:|---:|---:|---:|",
            *compiled_lines,
            "",
        ]
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
