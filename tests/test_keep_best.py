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
