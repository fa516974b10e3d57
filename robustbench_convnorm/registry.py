"""A tiny name -> factory registry shared by normalizers, models, data sources
and evaluators, so that each seam reports unknown names and options the same way."""
from __future__ import annotations

import difflib
import inspect
import math
import numbers
import typing
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, TypeVar

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


def _takes_no_options(factory: Callable) -> bool:
    """A class without an __init__ of its own (object's takes *args, **kwargs)."""
    return factory is object.__init__


def check_options(kind: str, name: str, factory: Callable, options: Dict[str, Any],
                  aliases: Optional[Mapping[str, str]] = None) -> None:
    """Stop with one message if `options` holds a key the factory does not
    take, or a value its annotation does not admit (check_option_types).
    ``aliases`` maps another spelling of an option to its name."""
    aliases = dict(aliases or {})
    sig = inspect.signature(factory)
    allowed = accepted_options(factory)
    if _takes_no_options(factory) or not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        for key in options:
            if key not in allowed and key not in aliases:
                raise RegistryError(
                    f"{kind} '{name}' has no option '{key}'{closest(key, [*allowed, *aliases])}; "
                    f"allowed: {', '.join(sorted(allowed)) or '(none)'}"
                )
    check_option_types(kind, name, factory, {aliases.get(k, k): v for k, v in options.items()},
                       spelled={aliases.get(k, k): k for k in options})


def _hints(factory: Callable) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve: nothing to check against
        return {}


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _admits(tp, value) -> Optional[bool]:
    """Whether ``value`` is of the annotated type ``tp``; None where the
    annotation is not one of the plain types checked here."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        results = [_admits(a, value) for a in typing.get_args(tp)]
        return None if None in results else any(results)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:  # 2.0 is an integer; 2.5 and True are not
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        return isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer())
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    return None


def _describe(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def check_option_types(kind: str, name: str, factory: Callable, options: Dict[str, Any],
                       spelled: Optional[Mapping[str, str]] = None) -> None:
    """Stop with one message if a value does not match its option's annotation
    in the factory's signature (bool, int, float, str, Optional of these; a
    default of None also admits null). Options annotated otherwise, or not at
    all, are the factory's own to check."""
    hints = _hints(factory)
    params = inspect.signature(factory).parameters
    for key, value in options.items():
        tp = hints.get(key)
        if tp is None:
            continue
        if value is None and key in params and params[key].default is None:
            continue
        if _admits(tp, value) is False:
            shown = (spelled or {}).get(key, key)
            raise RegistryError(f"{kind} '{name}': option '{shown}' must be {_describe(tp)}, got {value!r}"
                                + (" (write true or false without quotes)" if tp is bool
                                   and str(value).lower() in ("true", "false", "yes", "no", "on", "off") else ""))


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
        check_options(self.kind, name, cls.__init__, options, getattr(cls, "option_aliases", None))
        return cls(**options)

    def names(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
