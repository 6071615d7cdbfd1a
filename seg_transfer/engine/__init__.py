"""The one training engine for every task: the trainer, evaluation, losses, metrics, plots, the feature
cache and the distributed plumbing; what differs per task lives in ``tasks/``."""
