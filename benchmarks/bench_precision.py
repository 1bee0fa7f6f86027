"""What bf16 autocast buys and costs on this CPU: why ``precision="auto"`` is fp32 on the CPU.

The real pretrained MobileNetV2 (IMAGENET1K_V1, offline) and ResNet-50 (random
init: speed only) embed 64 real 224-px photo crops (scikit-learn's sample
photos), in fp32 and in bf16, interleaved in one run. Reports images/second,
the bf16/fp32 speed ratio, and the per-row cosine similarity of the bf16
embeddings to the fp32 ones (min and mean; real weights only), next to
whether the CPU computes bf16 natively (AVX-512 BF16 / AMX).

    python benchmarks/bench_precision.py --write benchmarks/results/precision.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from bench_featurize import real_crops

from sklearn_tl import PretrainedCNNFeaturizer
from sklearn_tl.runtime.device import cpu_has_native_bf16


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", default=None)
    args = parser.parse_args()
    X = real_crops(args.n)
    lines = [
        f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}; {args.n} real crops, 224 px",
        "",
        "| backbone | fp32 img/s | bf16 img/s | bf16 / fp32 | cosine bf16 vs fp32 (min / mean) |",
        "|---|---|---|---|---|",
    ]
    for name, weights in (("mobilenet_v2", "IMAGENET1K_V1"), ("resnet50", None)):
        models = {
            p: PretrainedCNNFeaturizer(name, weights=weights, precision=p, random_state=0).fit(X[:1])
            for p in ("float32", "bfloat16")
        }
        rows = {p: m.transform(X) for p, m in models.items()}  # warm-up, and the rows compared
        times = {p: [] for p in models}
        for _ in range(args.repeats):
            for p, m in models.items():  # interleaved: noise hits both alike
                start = time.perf_counter()
                m.transform(X)
                times[p].append(time.perf_counter() - start)
        speed = {p: args.n / statistics.median(t) for p, t in times.items()}
        cosine = "n/a (random init)"
        if weights is not None:
            c = _cosine(rows["bfloat16"], rows["float32"])
            cosine = f"{c.min():.4f} / {c.mean():.4f}"
        lines.append(
            f"| {name} | {speed['float32']:.1f} | {speed['bfloat16']:.1f} | "
            f"{speed['bfloat16'] / speed['float32']:.2f}x | {cosine} |"
        )
    emit("\n".join(lines), args.write)


if __name__ == "__main__":
    main()
