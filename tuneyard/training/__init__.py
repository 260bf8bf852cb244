"""Training: methods, runs, metrics, checkpoints; the customized models they produce."""
