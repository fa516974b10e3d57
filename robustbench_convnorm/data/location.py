"""Where the data is: ``data.root`` as a user setting, and the check that the
data is there before any run starts.

``data.root`` may name environment variables, ``${VAR}`` or
``${VAR:-default}``, and start with ``~``. The shipped configs write
``${ROBUSTBENCH_DATA:-data}``: set ROBUSTBENCH_DATA to the folder that holds
your data sets (``cifar-10-batches-py/``, ``cifar10-jpeg/``...), else they are
looked for in ``data/`` under the working directory. The config (and so the
run id) keeps the text as written; the path is worked out where the data is
read, and recorded in each run's record (``data_root``).

:func:`locate_data` checks a config's data without reading it: the files a
source needs exist (or can be downloaded), else one DataError naming what is
missing and how to point to it. A source says what it needs with a
``locate(root, download, **options)`` function set on its factory; bundled
and generated sources (digits, synthetic) need nothing.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from .base import SOURCES, DataError

__all__ = ["DATA_ENV", "DEFAULT_DATA_ROOT", "expand_root", "locate_data", "HOW_TO_SET"]

DATA_ENV = "ROBUSTBENCH_DATA"
#: what a source with no data.root reads: $ROBUSTBENCH_DATA, else data/ under the working directory
DEFAULT_DATA_ROOT = "${" + DATA_ENV + ":-data}"
HOW_TO_SET = (f"set {DATA_ENV}=DIR (the folder holding the data sets), or --set data.root=PATH")
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_root(root: Optional[str]) -> Optional[str]:
    """``${VAR}`` and ``${VAR:-default}`` replaced, ``~`` expanded; a variable
    that is unset (or empty) and has no default is a DataError."""
    if root is None:
        return None

    def value(match: re.Match) -> str:
        name, default = match.group("name"), match.group("default")
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise DataError(f"data.root {root!r} names ${{{name}}}, which is not set; set {name}, or write "
                        f"${{{name}:-DEFAULT}} in the config")

    text = _VAR.sub(value, str(root))
    if "${" in text:
        raise DataError(f"data.root {root!r}: cannot read the variable in it; write ${{NAME}} or "
                        f"${{NAME:-default}}")
    return os.path.expanduser(text)


def locate_data(data_cfg) -> str:
    """One line saying where the data of ``data_cfg`` is, or a DataError
    naming what is missing and how to point to it."""
    fn = SOURCES.get(data_cfg.source)
    locate = getattr(fn, "locate", None)
    if locate is None:
        return f"{data_cfg.source} (bundled or generated; nothing to find)"
    return locate(root=expand_root(data_cfg.root), download=data_cfg.download, **data_cfg.options)
