"""The fine-tuner's parts state what they need: the skorch hooks' attributes, the freeze schedule's own spec.

``ImageTrainingMixin`` lists what it reads from the estimator and names what
is missing; :class:`FreezeSchedule` resolves the ``freeze`` spec against the
net's module itself, so ``initialize()`` runs skorch's start-up in skorch's
order (callbacks, then the module).
"""

import ast
import inspect

import numpy as np
import pytest
import torch
from skorch import NeuralNet

import sklearn_tl.finetune.hooks as hooks
from sklearn_tl import FineTuneClassifier, FreezeSchedule
from sklearn_tl.finetune.freeze import resolve_freeze
from sklearn_tl.finetune.hooks import ImageTrainingMixin


def test_the_stated_contract_covers_every_attribute_the_hooks_read():
    tree = ast.parse(inspect.getsource(hooks))
    mixin = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ImageTrainingMixin")
    own = {n.name for n in mixin.body if isinstance(n, ast.FunctionDef)}
    read = {
        node.attr
        for node in ast.walk(mixin)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        and isinstance(node.ctx, ast.Load)
    }
    net = NeuralNet(torch.nn.Linear, criterion=torch.nn.MSELoss)
    skorch_own = set(dir(NeuralNet)) | set(vars(net)) | {
        "module_", "criterion_", "history_", "callbacks_", "initialized_", "_criteria", "_optimizers"}
    stated = {*ImageTrainingMixin.hook_parameters, *ImageTrainingMixin.hook_resolved, *ImageTrainingMixin.hook_methods}
    optional = {"_fit_seed", "_missing_device"}  # read with a default, or written by the mixin itself
    unstated = read - own - skorch_own - stated - optional - {"hook_parameters", "hook_resolved", "hook_methods"}
    assert not unstated, f"ImageTrainingMixin reads {sorted(unstated)} without stating them"


X = np.random.default_rng(0).integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
Y = [0, 1] * 3


def test_a_missing_attribute_is_named():
    clf = FineTuneClassifier("resnet18", weights=None, image_size=16, max_epochs=0, head_init="random",
                             random_state=0).fit(X, Y)
    dataset = clf.get_dataset(X)
    assert len(list(clf.get_iterator(dataset))) >= 1
    del clf.data_config_
    with pytest.raises(AttributeError, match="has no data_config_"):
        clf.get_iterator(dataset)


def test_the_freeze_schedule_resolves_its_own_spec(monkeypatch):
    order = []
    for step in ("_initialize_callbacks", "_initialize_module"):
        real = getattr(FineTuneClassifier, step)
        monkeypatch.setattr(FineTuneClassifier, step,
                            lambda self, *a, _real=real, _step=step, **k: order.append(_step) or _real(self, *a, **k))
    clf = FineTuneClassifier("resnet18", weights=None, image_size=16, freeze=2, max_epochs=1, head_init="random",
                             random_state=0).fit(X, Y)
    assert order == ["_initialize_callbacks", "_initialize_module"]  # skorch's order: nothing re-ordered
    schedule = dict(clf.callbacks_)["freeze"]
    assert isinstance(schedule, FreezeSchedule) and schedule.freeze == 2 and not schedule.frozen
    frozen = set(resolve_freeze(2, clf.module_))
    assert frozen and schedule.frozen_in(clf.module_, 2) == frozen == set(clf.frozen_params_)
    assert all(not p.requires_grad for name, p in clf.module_.named_parameters() if name in frozen)
    assert all(p.requires_grad for name, p in clf.module_.named_parameters() if name not in frozen)


def test_a_schedule_pickled_by_0_1_keeps_its_resolved_names():
    schedule = FreezeSchedule(frozen=["embedder.trunk.0.weight"], unfreeze_after=1)
    del schedule.__dict__["freeze"]  # what unpickling a 0.1 callback gives
    network = torch.nn.Module()
    network.embedder = torch.nn.Linear(2, 2)
    assert schedule.frozen_in(network, 1) == {"embedder.weight", "embedder.bias"}
    assert schedule.frozen_in(network, 2) == {"embedder.trunk.0.weight"}
