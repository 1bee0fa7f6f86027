"""Fine-tuning: accuracy per epoch of each mode, and skorch's overhead per epoch.

Data: scikit-learn's ``load_digits`` (real 8x8 scans of handwritten digits),
upscaled to ``--image-size`` px, a fixed train/test split. Backbone:
MobileNetV2 with the real ImageNet weights (offline file), on this machine's
device.

1. Accuracy on the test images after every epoch of one ``--epochs`` run:

   - head-only: ``freeze="backbone"`` (only the new linear head trains);
   - full fine-tune: the defaults (head alone for 1 epoch, then everything,
     the backbone at lr/10, warm-up + cosine per phase, augmentation);
   - hybrid: an ``SVC`` fitted on the embeddings of the network being tuned
     in the full run, at each epoch (epoch 0: the frozen ImageNet embeddings,
     i.e. PretrainedCNNFeaturizer + SVC).

2. Time per epoch of ``FineTuneClassifier`` against a plain hand-written
   PyTorch loop of the same model (MobileNetV2 trunk + linear head, channels
   last, AdamW), the same images (resized per image in a Dataset), the same
   batch size, full fine-tuning with no validation split. Single epochs
   alternate so machine noise hits both alike; the median per-pair ratio.

    python benchmarks/bench_finetune.py --write benchmarks/RESULTS_finetune.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from _report import emit  # benchmarks/_report.py (scripts run from benchmarks/)
from sklearn.datasets import load_digits
from sklearn.svm import SVC
from skorch.callbacks import Callback
from torchvision.transforms.v2 import functional as TF

from sklearn_tl._engine import resolve_device
from sklearn_tl._finetune import FineTuneClassifier
from sklearn_tl._model import build_embedder

WEIGHTS = "IMAGENET1K_V1"


def digits(n_train: int, n_test: int):
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    X = (data.images[order] / 16.0).astype(np.float32)
    y = data.target[order]
    return X[:n_train], y[:n_train], X[n_train : n_train + n_test], y[n_train : n_train + n_test]


class TestAccuracy(Callback):
    """After every epoch: accuracy of the network and of an SVC on its embeddings."""

    def __init__(self, X_train, y_train, X_test, y_test, hybrid: bool):
        self.data = (X_train, y_train, X_test, y_test)
        self.hybrid = hybrid
        self.rows = []

    def _hybrid(self, net):
        X_train, y_train, X_test, y_test = self.data
        svc = SVC().fit(net.transform(X_train), y_train)
        return svc.score(net.transform(X_test), y_test)

    def on_train_begin(self, net, **kwargs):
        if self.hybrid and not self.rows:
            self.rows.append((0, None, self._hybrid(net)))  # the frozen ImageNet embeddings

    def on_epoch_end(self, net, **kwargs):
        X_train, y_train, X_test, y_test = self.data
        net_acc = net.score(X_test, y_test)
        self.rows.append((len(net.history), net_acc, self._hybrid(net) if self.hybrid else None))


def accuracy_curves(args, data):
    X_train, y_train, X_test, y_test = data
    common = dict(weights=WEIGHTS, image_size=args.image_size, max_epochs=args.epochs, random_state=0)
    curves = {}
    for mode, params in (("head-only", dict(freeze="backbone")), ("full", {})):
        probe = TestAccuracy(X_train, y_train, X_test, y_test, hybrid=mode == "full")
        start = time.perf_counter()
        FineTuneClassifier("mobilenet_v2", callbacks=[("test_accuracy", probe)], **common, **params).fit(
            X_train, y_train
        )
        curves[mode] = (probe.rows, time.perf_counter() - start)
        print(mode, probe.rows, f"{curves[mode][1]:.0f}s", flush=True)
    return curves


class ResizedImages(torch.utils.data.Dataset):
    """The plain loop's data: each image resized and centre-cropped when loaded."""

    def __init__(self, X, y, size):
        self.X, self.y, self.size = X, y, size
        self.resize = int(round(size / 0.875))

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        image = torch.from_numpy(self.X[i]).unsqueeze(0)
        image = TF.center_crop(TF.resize(image, self.resize, antialias=True), [self.size, self.size])
        return image.expand(3, -1, -1), int(self.y[i])


class PlainLoop:
    """The hand-written loop: model, optimizer and loader built once, one epoch per call."""

    def __init__(self, X, y, args, device):
        torch.manual_seed(0)
        built = build_embedder("mobilenet_v2", WEIGHTS, image_size=args.image_size)
        model = torch.nn.Sequential(built.module, torch.nn.Dropout(0.2), torch.nn.Linear(built.n_features, 10))
        self.model = model.to(device).to(memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        dataset = ResizedImages(X, y, args.image_size)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
        self.device = device

    def epoch(self) -> float:
        start = time.perf_counter()
        for images, targets in self.loader:
            images = images.to(self.device).contiguous(memory_format=torch.channels_last)
            self.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(images), targets.to(self.device))
            loss.backward()
            self.optimizer.step()
        return time.perf_counter() - start


def overhead(args, data, device):
    """Alternate single epochs of both, so each pair sees the same machine load."""
    X, y = data[0][: args.timing_images], data[1][: args.timing_images]
    ours = FineTuneClassifier(
        "mobilenet_v2",
        weights=WEIGHTS,
        image_size=args.image_size,
        max_epochs=1,
        batch_size=args.batch_size,
        unfreeze_after=0,
        augment=False,
        random_state=0,
    ).fit(X, y)  # warm-up epoch, not timed
    plain = PlainLoop(X, y, args, device)
    plain.epoch()  # warm-up epoch, not timed
    ours_s, plain_s = [], []
    for _ in range(args.pairs):
        ours.partial_fit(X, y)
        ours_s.append(ours.history[-1, "dur"])
        plain_s.append(plain.epoch())
        print(f"ours {ours_s[-1]:.2f}s plain {plain_s[-1]:.2f}s", flush=True)
    ratios = [o / p for o, p in zip(ours_s, plain_s)]
    return statistics.median(ours_s), statistics.median(plain_s), statistics.median(ratios), len(ratios)


def report(args, curves, timing, device) -> str:
    lines = [
        "## Fine-tuning (`benchmarks/bench_finetune.py`)",
        "",
        f"Command: `python benchmarks/bench_finetune.py {args.command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {device}, torch {torch.__version__}. Data: load_digits, {args.n_train} train / {args.n_test} test "
        f"images upscaled to {args.image_size} px. MobileNetV2, ImageNet weights, batch size 32 (CPU default).",
        "",
    ]
    if curves is not None:
        lines += accuracy_table(args, curves)
    lines += timing_table(args, timing)
    return "\n".join(lines)


def accuracy_table(args, curves) -> list[str]:
    lines = [
        f"### Test accuracy after each epoch ({args.epochs}-epoch runs)",
        "",
        "| epoch | head-only | full fine-tune | hybrid (SVC on tuned embeddings) |",
        "|---:|---:|---:|---:|",
    ]
    head_rows = {e: acc for e, acc, _ in curves["head-only"][0]}
    for epoch, net_acc, svc_acc in curves["full"][0]:
        head = head_rows.get(epoch)
        cells = [f"{v:.3f}" if v is not None else "–" for v in (head, net_acc, svc_acc)]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Epoch 0 of the hybrid column is PretrainedCNNFeaturizer + SVC (frozen ImageNet embeddings). "
        f"Wall time of the runs, including the per-epoch evaluation: head-only {curves['head-only'][1]:.0f} s, "
        f"full + hybrid {curves['full'][1]:.0f} s.",
        "",
    ]
    return lines


def timing_table(args, timing) -> list[str]:
    return [
        "### Time per epoch: FineTuneClassifier vs a plain PyTorch loop",
        "",
        f"{args.timing_images} images, full fine-tuning, no validation split. Single epochs alternate "
        f"(ours, plain, ours, ...) after one untimed warm-up epoch each; medians of {timing[3]} pairs, and the "
        "median of the per-pair ratios (pairs share the machine's load at that moment).",
        "",
        "| FineTuneClassifier (s/epoch) | plain loop (s/epoch) | median ratio ours/plain |",
        "|---:|---:|---:|",
        f"| {timing[0]:.2f} | {timing[1]:.2f} | {timing[2]:.3f} |",
        "",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timing-images", type=int, default=320)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--skip-accuracy", action="store_true", help="only the timing comparison")
    parser.add_argument("--write", default=None, help="write the Markdown report here")
    args = parser.parse_args(argv)
    args.command = " ".join(a for a in (argv or __import__("sys").argv[1:]))
    device = resolve_device("auto")
    data = digits(args.n_train, args.n_test)
    curves = None if args.skip_accuracy else accuracy_curves(args, data)
    timing = overhead(args, data, device)
    emit(report(args, curves, timing, device), args.write)


if __name__ == "__main__":
    main()
