"""The Lightning callbacks of a run, by concern; conf/callbacks/default.yaml lists every one:

- `checkpointing`: the record of the best across resumes, torch's random state in checkpoints
- `stopping`: validate at the last step, stop on a diverged loss, save on Ctrl+C
- `tensorboard`: hyperparameters (HPARAMS) and text samples (TEXT, samples.txt)
- `throughput`: characters per second
"""
