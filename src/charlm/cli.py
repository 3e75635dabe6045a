"""Command-line glue shared by the entry points."""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from collections.abc import Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

# Hydra's flags that take no value. Hydra 1.3 parses its command line with argparse, which stops
# collecting overrides at a flag: `train.py model=lstm -m hidden=32,256` fails with "unrecognized
# arguments" (facebookresearch/hydra#3053). Moving these flags first makes any order work.
_BARE_FLAGS = {"-m", "--multirun", "-r", "--run", "--resolve"}
_OVERRIDE = re.compile(r"^(?P<key>[+~]{0,2}[A-Za-z_][\w.@/-]*)=(?P<value>.*)$", re.DOTALL)


def hydra_flags_first(argv: list[str] | None = None) -> None:
    """Reorder `argv` (default `sys.argv`) in place so that Hydra's bare flags precede overrides."""
    argv = sys.argv if argv is None else argv
    args = argv[1:]
    argv[1:] = [a for a in args if a in _BARE_FLAGS] + [a for a in args if a not in _BARE_FLAGS]


def check_keys_are_ascii(argv: list[str] | None = None) -> None:
    """Exit with one line for a setting name typed with an accent (`hídden=32`): Hydra's lexer
    would answer with its own exception's name. The value may hold any text; the name may not."""
    argv = sys.argv if argv is None else argv
    for arg in argv[1:]:
        key = arg.split("=", 1)[0] if "=" in arg else None
        if key and not key.isascii():
            plain = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode()
            raise SystemExit(
                f"{arg}: setting names are plain ASCII: did you mean {plain}={arg.split('=', 1)[1]}?"
            )


# choices that need an optional extra: (override's key, value) -> (Hydra plugin module, extra)
_OPTIONAL = {
    ("hparams_search", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "search"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "search"),
}


def check_extras_installed(argv: list[str] | None = None) -> None:
    """Exit with one line naming the extra to install when a choice needs a plugin that is not
    installed (`hparams_search=optuna` without `charlm[search]`): Hydra would answer that the
    config option does not exist."""
    argv = sys.argv if argv is None else argv
    for arg in argv[1:]:
        key, _, value = arg.lstrip("+~").partition("=")
        needs = _OPTIONAL.get((key, value))
        if needs is None:
            continue
        module, extra = needs
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise SystemExit(
                f"{arg} needs Hydra's Optuna sweeper, an optional extra: pip install 'charlm[{extra}]' "
                f"(from a clone: pip install -e '.[{extra}]')"
            )


def hydra_quote(text: str) -> str:
    """`text` as a single-quoted Hydra string: quotes escaped, and the backslashes before them."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    return "'" + re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text) + "'"


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_override(override)
    except HydraException:  # the lexer and the parser raise different kinds
        return False
    return True


def quote_free_text(
    argv: list[str] | None = None, text: Iterable[str] = (), paths: Iterable[str] = ()
) -> None:
    """Quote, in place, the values of `text` keys (prompts: any text, taken literally) and of `paths`
    keys that Hydra's grammar would reject: `prompt=¿Qué es, Sancho?` and `data.path=~/poemas/canción.txt`
    then work as typed, where Hydra accepts no accents, `¿`, `,` or `€` unquoted. Quoted paths, and
    every other key, stay as they are: a typo elsewhere is still Hydra's error to report.
    """
    argv = sys.argv if argv is None else argv
    text, paths = set(text), set(paths)
    for i, arg in enumerate(argv[1:], start=1):
        match = _OVERRIDE.match(arg)
        name = match["key"].lstrip("+~") if match else None
        if name not in text | paths:
            continue
        key, value = match["key"], match["value"]
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if name in text:  # literally as typed: quotes kept, ${...} not interpolated
            argv[i] = key + "=" + hydra_quote(value.replace("${", "\\${"))
        elif not quoted and not _parses(arg):
            argv[i] = key + "=" + hydra_quote(value)
