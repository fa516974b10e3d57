"""A tiny name -> factory registry shared by normalizers, models, data sources
and evaluators, so that each seam reports unknown names and options the same way."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """An unknown name or option; the message names the fix."""


def closest(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def accepted_options(factory: Callable) -> Dict[str, Any]:
    """Keyword options of a factory with their defaults (inspect.Parameter.empty if required)."""
    sig = inspect.signature(factory)
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    }


def check_options(kind: str, name: str, factory: Callable, options: Dict[str, Any]) -> None:
    """Stop with one message if `options` holds a key the factory does not take."""
    sig = inspect.signature(factory)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = accepted_options(factory)
    for key in options:
        if key not in allowed:
            raise RegistryError(
                f"{kind} '{name}' has no option '{key}'{closest(key, allowed)}; "
                f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
            )


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            # Re-registering the same object (a module imported twice) is harmless;
            # two different objects under one name is a bug worth stopping for.
            if name in self._items and self._items[name] is not obj and (
                getattr(self._items[name], "__qualname__", None) != getattr(obj, "__qualname__", None)
            ):
                raise RegistryError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            try:
                obj.registered_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise RegistryError(
                f"unknown {self.kind} '{name}'{closest(name, self._items)}; "
                f"registered: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
