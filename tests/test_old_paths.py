"""Module paths of 0.1 stay importable, so pickles written by 0.1 find their classes.

``tests/test_old_files.py`` loads real files of 0.1; these tests cover every
path in the table, and a pickle that names an old path.
"""

import importlib
import pickle

import pytest

from sklearn_tl import DataConfig, _old_paths


@pytest.mark.parametrize("old", sorted(_old_paths.MODULES))
def test_every_old_module_imports_and_finds_its_names(old):
    module = importlib.import_module(old)
    new = importlib.import_module(_old_paths.MODULES[old])
    public = [n for n in vars(new) if not n.startswith("__") and getattr(getattr(new, n), "__module__", None)
              == new.__name__]
    for name in public:
        assert getattr(module, name) is getattr(new, name)
    for name, home in _old_paths.MOVED.get(old, {}).items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name)


def test_a_pickle_naming_an_old_path_loads():
    data = pickle.dumps(DataConfig(crop_size=99), protocol=2)
    old = data.replace(b"sklearn_tl.data.config", b"sklearn_tl._preprocess")
    assert b"sklearn_tl._preprocess" in old
    assert pickle.loads(old) == DataConfig(crop_size=99)


def test_an_unknown_name_of_an_old_module_is_an_attribute_error():
    module = importlib.import_module("sklearn_tl._model")
    with pytest.raises(AttributeError):
        module.no_such_thing  # noqa: B018
