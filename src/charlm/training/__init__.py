"""Training: a run built from its config and fitted (`run`), its callbacks, checkpoints written
safely and checked before a resume, DDP ranks under Hydra, and run directories."""
