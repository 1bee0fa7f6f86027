"""Defaults shared by the estimators and the command line.

This module imports nothing, so ``sklearn-tl --help`` shows the estimators'
defaults without loading torch.
"""

#: ``FineTuneClassifier(max_epochs=...)`` and ``sklearn-tl train --max-epochs``.
FINETUNE_MAX_EPOCHS = 10
