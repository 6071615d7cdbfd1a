"""Training machinery: losses, metrics (and later the trainer, checkpoints)."""
