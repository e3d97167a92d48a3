"""A training run's machinery: the run folder, its state and checkpoints, signals, torchrun, the
optimizer and scheduler, batches, one epoch of training and evaluation, the end-of-run report."""
