"""Command-line glue shared by the entry points."""

import sys

# Hydra's flags that take no value. Hydra 1.3 parses its command line with argparse, which stops
# collecting overrides at a flag: `train.py model=lstm -m hidden=32,256` fails with "unrecognized
# arguments" (facebookresearch/hydra#3053). Moving these flags first makes any order work.
_BARE_FLAGS = {"-m", "--multirun", "-r", "--run", "--resolve"}


def hydra_flags_first(argv: list[str] | None = None) -> None:
    """Reorder `argv` (default `sys.argv`) in place so that Hydra's bare flags precede overrides."""
    argv = sys.argv if argv is None else argv
    args = argv[1:]
    argv[1:] = [a for a in args if a in _BARE_FLAGS] + [a for a in args if a not in _BARE_FLAGS]
