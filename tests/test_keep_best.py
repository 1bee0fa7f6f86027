"""Issue 22: fine-tuning never ends below its starting point, and lr="auto" stays within its range."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from skorch.dataset import ValidSplit

from sklearn_tl import LRFinderWarning

from .test_finetune import stripe_images, tiny


@pytest.fixture(scope="module")
def stripes():
    return stripe_images(seed=2, names=("h", "v"))


def _same_state(a, b):
    sa, sb = a.module_.state_dict(), b.module_.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _split():
    return ValidSplit(0.25, stratified=True, random_state=0)


class TestKeepBestEpoch:
    def test_a_harmful_rate_gives_back_the_probe_head(self, stripes):
        X, y = stripes
        probe = tiny(max_epochs=0, train_split=_split()).fit(X, y)  # the LP-FT head, fitted on the same 18 images
        harmful = dict(max_epochs=2, lr=30.0, backbone_lr_scale=1.0, train_split=_split())
        last = tiny(**harmful, callbacks__keep_best=None).fit(X, y)
        kept = tiny(**harmful).fit(X, y)
        assert not _same_state(last, probe)  # training moved the weights...
        assert min(last.history[:, "valid_loss"]) > 1.0  # ...and made the model worse on the validation images
        assert kept.best_epoch_ == 0 and kept.history[-1, "best_epoch"] == 0
        assert _same_state(kept, probe)  # parameters and BatchNorm buffers of epoch 0
        np.testing.assert_allclose(kept.predict_proba(X), probe.predict_proba(X), atol=1e-5)
        np.testing.assert_allclose(kept.history[:, "train_loss"], last.history[:, "train_loss"], rtol=1e-5)

    def test_the_restored_model_predicts_transforms_pickles_and_trains_on(self, stripes):
        X, y = stripes
        clf = tiny(max_epochs=2, lr=30.0, backbone_lr_scale=1.0, layer="1", train_split=_split()).fit(X, y)
        assert clf.best_epoch_ == 0 and not clf.module_.training  # stored ready for inference
        assert not any(m.training for m in clf.module_.modules())
        proba, embedded = clf.predict_proba(X), clf.transform(X)
        keep = dict(clf.callbacks_)["keep_best"]
        assert getattr(keep, "_best", None) is None  # the kept weights are not held (nor pickled) after fit
        loaded = pickle.loads(pickle.dumps(clf))
        np.testing.assert_allclose(loaded.predict_proba(X), proba, atol=1e-6)
        np.testing.assert_allclose(loaded.transform(X), embedded, atol=1e-6)
        assert loaded.best_epoch_ == 0 and isinstance(loaded.best_epoch_, int)
        before = {k: v.clone() for k, v in clf.module_.state_dict().items()}
        clf.partial_fit(X, y)  # the call's own starting point is epoch 2, the last epoch of fit
        assert clf.best_epoch_ in (2, 3, 4) and len(clf.history) == 4
        assert clf.history[-1, "best_epoch"] == clf.best_epoch_
        unchanged = all(torch.equal(v, clf.module_.state_dict()[k]) for k, v in before.items())
        assert unchanged == (clf.best_epoch_ == 2)
        if unchanged:
            np.testing.assert_allclose(clf.predict_proba(X), proba, atol=1e-6)
        assert clf.transform(X).shape == embedded.shape and not clf.module_.training

    def test_kept_epoch_has_the_best_validation_loss(self, stripes):
        X, y = stripes
        clf = tiny(max_epochs=3, lr=1e-2, train_split=_split()).fit(X, y)
        losses = clf.history[:, "valid_loss"]
        assert clf.best_epoch_ in (0, 1, 2, 3) and clf.history[-1, "best_epoch"] == clf.best_epoch_
        if clf.best_epoch_:
            assert losses[clf.best_epoch_ - 1] == min(losses)

    def test_without_a_split_the_last_epoch_is_kept(self, stripes):
        X, y = stripes
        clf = tiny(max_epochs=2, lr=30.0, backbone_lr_scale=1.0).fit(X, y)
        assert clf.best_epoch_ == 2 and "best_epoch" not in clf.history[-1]
        assert tiny(max_epochs=0).fit(X, y).best_epoch_ == 0


class TestAutoRate:
    def test_auto_rate_is_within_the_sweep(self, stripes):
        X, y = stripes
        clf = tiny(max_epochs=1, lr="auto").fit(X, y)
        lrs = clf.lr_finder_.lrs
        assert lrs[0] <= clf.lr_ <= lrs[-1] and clf.lr_ == clf.lr_finder_.suggestion

    def test_no_signal_trains_at_the_default_with_one_warning(self, stripes):
        X, y = stripes
        # Nothing moves during the range test (the head's rate is 0, the backbone frozen): a flat curve.
        clf = tiny(max_epochs=1, lr="auto", freeze="backbone", optimizer__param_groups=[("head.*", {"lr": 0.0})])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            clf.fit(X, y)
        found = [w for w in caught if issubclass(w.category, LRFinderWarning)]
        assert len(found) == 1 and "default lr=0.001" in str(found[0].message)
        assert clf.lr_ == pytest.approx(1e-3) and clf.lr_finder_.fallback
        with pytest.warns(LRFinderWarning, match="default lr=0.01"):
            result = clf.lr_find(X, y, start_lr=1e-2, end_lr=1.0, num_iter=20)
        assert result.fallback and result.suggestion == pytest.approx(1e-2)  # within the swept range


@pytest.fixture(scope="module")
def many_stripes():
    """120 stripe images (five draws of 24): enough for train_split="auto" to hold out 12."""
    parts = [stripe_images(seed=s, names=("h", "v")) for s in range(10, 15)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class TestAutoSplit:
    """train_split="auto" (the default): a hold-out that decides between the probe head and the tuned network."""

    def test_the_default_holds_out_a_tenth_in_fit(self, many_stripes):
        X, y = many_stripes
        clf = tiny(max_epochs=1, lr=1e-3)
        assert clf.train_split == "auto"
        clf.fit(X, y)
        assert "valid_loss" in clf.history[-1] and "best_epoch" in clf.history[-1]
        split = clf._resolved_train_split(np.asarray(y), len(y))
        assert split is None  # outside fit nothing is held out...
        clf._fit_auto_split = True
        try:
            split = clf._resolved_train_split(np.asarray(y), len(y))
        finally:
            del clf._fit_auto_split
        assert isinstance(split, ValidSplit) and split.cv == 0.1 and split.stratified  # ...in fit, 12 of 120

    def test_a_long_run_holds_out_nothing(self, many_stripes):
        X, y = many_stripes  # 15 batches of 8 per epoch: 3 epochs are 45 steps, 4 are 60 (AUTO_MAX_STEPS: 50)
        assert "valid_loss" in tiny(max_epochs=3, lr=1e-3).fit(X, y).history[-1]
        long = tiny(max_epochs=4, lr=1e-3).fit(X, y)
        assert "valid_loss" not in long.history[-1] and long.best_epoch_ == 4
        assert "valid_loss" in tiny(max_epochs=4, lr=1e-3, batch_size=16).fit(X, y).history[-1]  # 32 steps

    def test_too_few_images_or_a_rare_class_hold_out_nothing(self, stripes, many_stripes):
        X, y = stripes  # 24 images: 3 would be held out, fewer than 10
        clf = tiny(max_epochs=1).fit(X, y)
        assert "valid_loss" not in clf.history[-1] and clf.best_epoch_ == 1
        X, y = many_stripes
        y = y.astype("<U4")  # a copy
        y[0] = "once"  # a class with one image cannot be in both parts
        clf = tiny(max_epochs=1).fit(X, y)
        assert "valid_loss" not in clf.history[-1] and list(clf.classes_) == ["h", "once", "v"]

    def test_a_harmful_run_ends_at_the_probe_fitted_on_every_image(self, many_stripes):
        X, y = many_stripes
        probe = tiny(max_epochs=0).fit(X, y)  # max_epochs=0 holds out nothing: the head fitted on all 120
        assert "valid_loss" not in (probe.history[-1] if len(probe.history) else {})
        kept = tiny(max_epochs=2, lr=30.0, backbone_lr_scale=1.0).fit(X, y)
        assert kept.best_epoch_ == 0 and kept.history[-1, "best_epoch"] == 0  # validation images were held out
        # Backbone restored and head fitted again on the held-out images too: the probe itself.
        state, reference = kept.module_.state_dict(), probe.module_.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference if not k.startswith("head."))
        np.testing.assert_allclose(kept.predict_proba(X), probe.predict_proba(X), atol=2e-3)
        assert (kept.predict(X) == probe.predict(X)).all()
        # (A split the user chose keeps its validation images out of the head: the test above.)

    def test_an_epoch_that_helps_is_kept(self, many_stripes):
        X, y = many_stripes
        clf = tiny(max_epochs=3, lr=3e-2, head_init="random").fit(X, y)
        losses = clf.history[:, "valid_loss"]
        assert clf.best_epoch_ >= 1 and losses[clf.best_epoch_ - 1] == min(losses)

    def test_the_cli_says_what_was_kept(self, many_stripes, stripes):
        from sklearn_tl.cli.commands import _kept_epoch_line

        X, y = many_stripes
        kept = tiny(max_epochs=2, lr=30.0, backbone_lr_scale=1.0).fit(X, y)
        assert _kept_epoch_line(kept) == "kept: the probe head (no epoch of 2 beat it on 12 held-out images)"
        helped = tiny(max_epochs=3, lr=3e-2, head_init="random").fit(X, y)
        assert _kept_epoch_line(helped) == (
            f"kept: epoch {helped.best_epoch_} of 3 (it beat the starting weights on 12 held-out images)")
        assert _kept_epoch_line(tiny(max_epochs=1).fit(*stripes)) is None  # nothing held out

    def test_partial_fit_and_warm_start_hold_out_nothing(self, many_stripes):
        X, y = many_stripes
        clf = tiny(max_epochs=1)
        clf.partial_fit(X, y)
        assert "valid_loss" not in clf.history[-1]
        clf.set_params(warm_start=True).fit(X, y)
        assert "valid_loss" not in clf.history[-1] and len(clf.history) == 2

    def test_an_unknown_split_name_is_refused(self, stripes):
        from sklearn.utils._param_validation import InvalidParameterError

        with pytest.raises(InvalidParameterError, match="train_split"):
            tiny(train_split="half").fit(*stripes)


class _Recording:
    """KeepBestEpoch that keeps what it scored."""

    @staticmethod
    def make():
        from sklearn_tl import KeepBestEpoch

        class Recording(KeepBestEpoch):
            def _consider(self, net, epoch, losses):
                self.scored = getattr(self, "scored", []) + [(epoch, losses.copy())]
                super()._consider(net, epoch, losses)

        return Recording()


def test_per_image_losses_are_the_epochs_validation_losses(many_stripes):
    X, y = many_stripes
    keep = _Recording.make()
    clf = tiny(max_epochs=3, lr=3e-2, callbacks__keep_best=keep).fit(X, y)
    epochs = [e for e, _ in keep.scored]
    assert epochs == [0, 1, 2, 3] and all(len(losses) == 12 for _, losses in keep.scored)
    for epoch, losses in keep.scored[1:]:  # taken from skorch's own validation pass, image by image
        assert losses.mean() == pytest.approx(clf.history[epoch - 1, "valid_loss"], rel=1e-5)


class TestMargin:
    """KeepBestEpoch's paired rule: a lower mean within the noise does not replace the start."""

    @staticmethod
    def _entry(epoch, losses):
        losses = np.asarray(losses, dtype=float)
        return (epoch, losses.mean(), None, losses)

    def test_noise_keeps_the_start_and_a_clear_gain_replaces_it(self):
        from sklearn_tl import KeepBestEpoch

        keep = KeepBestEpoch()
        start = self._entry(0, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
        noisy = self._entry(3, [0.1, 1.9, 0.2, 1.7, 0.3, 1.6])  # mean 0.97: lower, but by far less than its spread
        clear = self._entry(3, [0.5, 0.6, 0.4, 0.5, 0.55, 0.45])
        assert not keep._beats_start(noisy, start)
        assert keep._beats_start(clear, start)
        assert KeepBestEpoch(margin=0)._beats_start(noisy, start)  # margin 0: the lowest mean wins
        assert not keep._beats_start(None, start) and keep._beats_start(clear, None)
