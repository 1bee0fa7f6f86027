"""This module contains :class:`SettingsParamsMixin`: scikit-learn parameters on a skorch net.

skorch treats a ``torch.nn.Module`` attribute as a component and routes
``set_params`` by prefixes; scikit-learn wants plain parameters and nested
estimators. The mixin reconciles the two for the fine-tuners.
"""

from __future__ import annotations

__all__ = ["SettingsParamsMixin"]


class SettingsParamsMixin:
    """Parameters that may hold a module, and ``final_estimator__<name>``, on a skorch ``NeuralNet``.

    Mixed in before the net class. It needs ``_plain_params`` (the names of
    parameters that are settings even when they hold a module) and a
    ``final_estimator`` parameter.
    """

    # Parameters that may hold a torch module but are settings, not components.
    _plain_params = ("backbone", "head")

    def __setattr__(self, name, value):
        if name in self._plain_params:
            object.__setattr__(self, name, value)  # a backbone module is a setting, not a component
        else:
            super().__setattr__(name, value)

    def _get_param_names(self):
        return [name for name in super()._get_param_names() if not name.startswith("_") and name != "module"]

    def set_params(self, **params):
        nested = {
            k[len("final_estimator__") :]: params.pop(k) for k in list(params) if k.startswith("final_estimator__")
        }
        super().set_params(**params)
        if nested:
            if self.final_estimator is None:
                raise ValueError(f"Cannot set {sorted(nested)} on final_estimator=None.")
            self.final_estimator.set_params(**nested)
        return self
