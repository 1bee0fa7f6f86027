"""The fine-tuning layer: network, freeze schedule, callbacks, head fit, LR finder, labels, skorch hooks."""
