"""The fine-tuning recipe's parts: augmentation presets, the linear-probe head fit, the LR range test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from skorch import NeuralNetClassifier
from torch import nn

import sklearn_tl.data.transforms as preprocess_module
from sklearn_tl.data.augment import AUGMENT_PRESETS, resolve_augment
from sklearn_tl.exceptions import LRFinderWarning
from sklearn_tl.finetune.lr_finder import lr_range_test, suggest_lr
from sklearn_tl.data.config import DataConfig
from sklearn_tl.data.transforms import ImageTransform
from sklearn_tl.finetune.head_fit import fit_head


def _crop_fractions(monkeypatch, augment, n=300, side=8):
    """Fractions of an ``side x side`` image's area kept by ``n`` training crops."""
    seen = []
    real = preprocess_module.RandomResizedCrop.get_params

    def recording(image, scale, ratio):
        top, left, height, width = real(image, scale, ratio)
        seen.append(height * width / side**2)
        return top, left, height, width

    monkeypatch.setattr(preprocess_module.RandomResizedCrop, "get_params", staticmethod(recording))
    config = DataConfig(crop_size=32, resize_size=36)
    transform = ImageTransform(config, augment=augment)
    image = torch.randint(0, 256, (3, side, side), dtype=torch.uint8)
    torch.manual_seed(0)
    for _ in range(n):
        assert transform(image).shape == (3, 32, 32)
    return np.array(seen)


class TestAugment:
    def test_auto_keeps_most_of_a_small_image_and_never_flips(self, monkeypatch):
        flips = []
        monkeypatch.setattr(preprocess_module.TF, "horizontal_flip", lambda image: flips.append(1) or image)
        kept = _crop_fractions(monkeypatch, "auto")
        assert kept.min() >= 0.55 and np.median(kept) >= 0.75, (kept.min(), np.median(kept))
        assert not flips
        standard = _crop_fractions(monkeypatch, "standard")
        assert standard.min() < 0.45  # the ImageNet recipe does crop most of it away
        assert flips  # and flips

    def test_presets_and_errors(self):
        assert resolve_augment(False) is None
        assert resolve_augment(True) == AUGMENT_PRESETS["standard"]
        assert resolve_augment((0.5, 1.0)).scale == (0.5, 1.0)
        for bad in ("strong", (0.0, 1.0), (0.9, 0.5), (0.5,), 3):
            with pytest.raises(ValueError, match="augment"):
                resolve_augment(bad)

    def test_a_callable_runs_then_the_output_is_sized_for_the_network(self):
        config = DataConfig(crop_size=16, resize_size=18)
        calls = []
        transform = ImageTransform(config, augment=lambda im: calls.append(1) or im.flip(-2))
        image = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8)
        assert transform(image).shape == (3, 16, 16) and calls
        with pytest.raises(TypeError, match="must return a tensor"):
            ImageTransform(config, augment=lambda im: im.numpy())(image)


class TestFitHead:
    def test_classes_without_samples_are_not_pushed_away(self):
        rng = np.random.default_rng(0)
        Z = rng.normal(size=(60, 4)).astype(np.float32)
        y = (Z[:, 0] > 0).astype(int) + 2 * (Z[:, 1] > 0)  # classes 0-3 of 5: class 4 never occurs
        head = nn.Linear(4, 5)
        torch.nn.init.zeros_(head.bias)
        fit_head(head, torch.from_numpy(Z), torch.from_numpy(y))
        with torch.no_grad():
            assert abs(float(head.bias[4])) < 1e-6 and float(head.weight[4].abs().max()) < 0.05
            assert float(head.bias[:4].abs().max()) > 0.1  # the present classes did fit

    def test_equals_sklearn_logistic_regression(self):
        rng = np.random.default_rng(0)
        Z = rng.normal(size=(120, 6)).astype(np.float32)
        y = (Z[:, 0] + 0.5 * Z[:, 1] > 0).astype(int) + (Z[:, 2] > 1).astype(int)
        head = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))
        fit_head(head, torch.from_numpy(Z), torch.from_numpy(y), C=0.5)
        reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(Z, y)
        with torch.no_grad():
            W, b = head[1].weight.numpy(), head[1].bias.numpy()
        # Softmax is invariant to a shift of every class: compare centred parameters.
        np.testing.assert_allclose(W - W.mean(0), reference.coef_ - reference.coef_.mean(0), atol=2e-3)
        np.testing.assert_allclose(b - b.mean(), reference.intercept_ - reference.intercept_.mean(), atol=2e-3)
        assert head.training  # mode restored

    def test_class_weight_changes_the_fit(self):
        rng = np.random.default_rng(1)
        Z = torch.from_numpy(rng.normal(size=(100, 4)).astype(np.float32))
        y = torch.from_numpy((rng.random(100) < 0.15).astype(int))
        heads = []
        for class_weight in (None, torch.tensor([1.0, 6.0])):
            torch.manual_seed(0)
            head = nn.Linear(4, 2)
            fit_head(head, Z, y, class_weight=class_weight)
            heads.append(head(Z).argmax(1).sum().item())
        assert heads[1] > heads[0]  # weighting the rare class predicts it more often


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        return self.layers(x)


class TestLRRangeTest:
    def test_restores_module_optimizer_mode_and_random_state(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(96, 5)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
        net = NeuralNetClassifier(SmallNet, lr=0.01, optimizer=torch.optim.AdamW, batch_size=16,
                                  criterion=nn.CrossEntropyLoss, max_epochs=1, train_split=None, verbose=0)
        net.fit(X, y)  # optimizer state (Adam moments) exists
        net.module_.eval()
        before = {k: v.clone() for k, v in net.module_.state_dict().items()}
        optimizer_before = net.optimizer_.state_dict()
        moments = {k: {n: t.clone() for n, t in s.items()} for k, s in optimizer_before["state"].items()}
        torch.manual_seed(123)
        expected_next = torch.rand(3)
        torch.manual_seed(123)
        result = lr_range_test(net, net.get_dataset(X, y), start_lr=1e-5, end_lr=10.0, num_iter=30)
        assert torch.equal(torch.rand(3), expected_next)
        after = net.module_.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        state = net.optimizer_.state_dict()
        assert [g["lr"] for g in state["param_groups"]] == [g["lr"] for g in optimizer_before["param_groups"]]
        for k, s in state["state"].items():
            assert all(torch.equal(t, moments[k][n]) for n, t in s.items())
        assert not any(m.training for m in net.module_.modules())
        assert 5 <= len(result.lrs) <= 30 and result.lrs == sorted(result.lrs)
        assert result.suggestion is not None and 1e-5 <= result.suggestion <= 10.0

    def test_suggestion_is_the_steepest_descent(self):
        lrs = np.logspace(-5, 0, 11)
        losses = [2.0, 2.0, 1.99, 1.9, 1.5, 1.0, 0.9, 0.85, 0.8, 3.0, 9.0]
        assert suggest_lr(lrs, losses) == pytest.approx(lrs[4], rel=0.5)
        assert suggest_lr(lrs[:2], losses[:2]) is None

    def test_suggestion_without_a_descent_is_a_tenth_of_the_divergence_edge(self):
        lrs = np.logspace(-6, 0, 13)  # a fitted head: flat, then the loss blows up from lrs[9]
        losses = [0.30, 0.29, 0.31, 0.30, 0.30, 0.29, 0.30, 0.31, 0.35, 0.60, 2.0, 9.0, np.inf]
        assert suggest_lr(lrs, losses) == pytest.approx(lrs[9] / 10)
        assert suggest_lr(lrs, [0.3] * 13) is None  # never fell, never diverged: no signal (issue 22)

    def test_flat_loss_gives_no_suggestion(self):
        lrs = np.logspace(-6, 0, 40)
        noise = np.random.default_rng(0).normal(0, 0.01, 40)
        assert suggest_lr(lrs, 0.65 + noise) is None  # batch-to-batch noise of a loss that does not move

    def test_near_zero_loss_gives_no_suggestion(self):
        # The curve: a head that already fits the images, smoothed losses 0.0099 down to 0.0019.
        lrs = np.logspace(-6, 0, 40)
        noise = np.random.default_rng(1).normal(0, 0.0004, 40)
        losses = np.linspace(0.0099, 0.0019, 40) + noise
        assert suggest_lr(lrs, losses) is None

    def test_suggestion_never_leaves_the_swept_range(self):
        lrs = np.logspace(-6, 0, 30)  # the loss rises from the first rates on: a tenth of the edge is below 1e-6
        losses = [0.5, 0.5, 0.5, 0.9, 1.6, 2.5, 4.0] + [6.0] * 23
        assert lrs[0] <= suggest_lr(lrs, losses) <= lrs[-1]
        rising = np.linspace(0.4, 3.0, 30)
        assert lrs[0] <= suggest_lr(lrs, rising) <= lrs[-1]

    def test_no_signal_falls_back_to_the_default_with_one_warning(self):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(64, 5)).astype(np.float32)
        y = (X[:, 0] > 0).astype(np.int64)
        net = NeuralNetClassifier(SmallNet, lr=0.01, optimizer=torch.optim.SGD, batch_size=16,
                                  criterion=nn.CrossEntropyLoss, max_epochs=0, train_split=None, verbose=0,
                                  optimizer__param_groups=[("*", {"lr": 0.0})])  # nothing moves: a flat curve
        net.initialize()
        with pytest.warns(LRFinderWarning, match="no clear fall or rise") as record:
            result = lr_range_test(net, net.get_dataset(X, y), start_lr=1e-2, end_lr=10.0, num_iter=30,
                                   default_lr=1e-3)
        assert len(record) == 1 and result.fallback
        assert result.suggestion == pytest.approx(1e-2)  # the default, kept within the swept range
        assert result.as_dict()["fallback"] is True
