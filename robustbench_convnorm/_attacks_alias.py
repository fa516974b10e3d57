"""The evaluator package (the project's top-level ``attacks/`` folder) under a
name no file of the user's can shadow: ``robustbench_convnorm.attacks``.

Why: ``import attacks`` searches ``sys.path``, whose first entry is the working
directory (or the script's folder), so an ``attacks.py`` of the user's there
wins and the harness breaks (``run --list`` crashed). The project's code
imports ``robustbench_convnorm.attacks``, which this finder loads from the
folder beside the package by its path, never through ``sys.path``.

``import attacks`` keeps working where it finds this folder (the checkout, an
installed wheel, an editable install), and both names give the same module
objects: one registry of evaluators, never two copies. Whichever name is
imported first loads the files; the other name is an alias of it. Where
``import attacks`` would find a different ``attacks`` (the user's), that one is
left alone.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from typing import Optional

SHORT = "attacks"
CANONICAL = "robustbench_convnorm.attacks"
#: the folder holds the evaluators; in a checkout and in site-packages alike it sits beside this package
FOLDER = Path(__file__).resolve().parent.parent / SHORT


_SEARCHING = threading.local()


def _is_ours(paths) -> bool:
    """Whether a package's search locations (a module's ``__path__``, a spec's
    ``submodule_search_locations``) are FOLDER: the package from FOLDER, under either name."""
    return any(Path(p).resolve() == FOLDER for p in paths or [])


class _AliasLoader(importlib.abc.Loader):
    """Hands out the module already loaded (or loaded now) under the other name."""

    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system set the alias's spec on the module; it keeps its own
        module.__spec__ = self._spec


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        if fullname == CANONICAL:
            short = sys.modules.get(SHORT)
            if short is not None and _is_ours(getattr(short, "__path__", None)):  # `import attacks` came first
                return self._alias(fullname, SHORT)
            init = FOLDER / "__init__.py"
            if not init.is_file():
                raise ImportError(f"{CANONICAL}: the evaluator folder {FOLDER} is missing; reinstall "
                                  f"robustbench_convnorm (its wheel holds robustbench_convnorm/ and attacks/)")
            return importlib.util.spec_from_file_location(CANONICAL, init, submodule_search_locations=[str(FOLDER)])
        if fullname.startswith(CANONICAL + "."):
            parent = sys.modules.get(CANONICAL)
            if parent is not None and parent.__name__ == SHORT:
                return self._alias(fullname, SHORT + fullname[len(CANONICAL):])
            return None  # the ordinary search of the parent's __path__ (FOLDER)
        if fullname == SHORT:
            found = self._other_spec(fullname)
            if found is None or not _is_ours(found.submodule_search_locations):
                return None  # not ours (a user's attacks.py): leave it to the other finders
            return self._alias(fullname, CANONICAL)
        if fullname.startswith(SHORT + "."):
            parent = sys.modules.get(SHORT)
            if parent is not None and parent.__name__ == CANONICAL:
                return self._alias(fullname, CANONICAL + fullname[len(SHORT):])
        return None

    def _other_spec(self, fullname: str):
        """What the other finders would load for ``fullname`` (never asking this one again:
        a finder that searches through importlib.util.find_spec would recurse)."""
        if getattr(_SEARCHING, "active", False):
            return None
        _SEARCHING.active = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, None)
                if spec is not None:
                    return spec
            return None
        finally:
            _SEARCHING.active = False

    @staticmethod
    def _alias(fullname: str, target: str):
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(target), is_package=True)


_FINDER: Optional[_Finder] = None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once per process)."""
    global _FINDER
    if _FINDER is None:
        _FINDER = _Finder()
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
