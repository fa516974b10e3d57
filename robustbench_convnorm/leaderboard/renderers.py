"""The output formats: each is one ``render_<name>.py`` module in this package
that registers a function turning a :class:`~.board.Leaderboard` into text.

    @register_renderer("md", "leaderboard.md")
    def render(lb: Leaderboard) -> str: ...

A new format is one new file; ``--format`` lists and checks the registered
names, and a misspelt one gets the closest name suggested.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, List

from ..registry import Registry

RENDERERS: Registry = Registry("leaderboard format")


@dataclass(frozen=True)
class Renderer:
    name: str
    filename: str  # written into the output folder
    render: Callable  # (Leaderboard) -> str


def register_renderer(name: str, filename: str):
    def decorator(fn):
        RENDERERS.register(name)(Renderer(name, filename, fn))
        return fn
    return decorator


def _load_all() -> None:
    from . import __path__ as package_path

    for mod in pkgutil.iter_modules(package_path):
        if mod.name.startswith("render_"):
            importlib.import_module(f"{__package__}.{mod.name}")


def get_renderer(name: str) -> Renderer:
    """The renderer registered as ``name``; RegistryError (a ValueError) naming the closest one."""
    _load_all()
    return RENDERERS.get(name)


def renderer_names() -> List[str]:
    _load_all()
    return RENDERERS.names()
