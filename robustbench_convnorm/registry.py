"""A tiny name -> factory registry shared by normalizers, models, data sources
and evaluators, so that each seam reports unknown names and options the same way."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Generic, List, Optional, TypeVar

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
    """Names -> classes or factories. With ``base``, only subclasses of it may
    register (``decorator`` names the decorator in that error)."""

    def __init__(self, kind: str, base: Optional[type] = None, decorator: str = "register"):
        self.kind = kind
        self.base, self.decorator = base, decorator
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise RegistryError(f"@{self.decorator}('{name}') takes a subclass of {self.base.__name__}, "
                                    f"got {obj!r}")
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

    def build(self, name: str, /, **options):
        """The class registered as ``name``, built with its options; unknown options stop here."""
        cls = self.get(name)
        check_options(self.kind, name, cls.__init__, options)
        return cls(**options)

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
