"""Conv-layer normalizers. Each lives in its own module and registers itself;
importing this package registers the built-in ones. A new normalizer is one
new file (anywhere) using ``@register_normalizer``; nothing else changes."""
import importlib
import pkgutil

from .base import CONV_ROLES, Normalizer, tagged_convs
from .registry import NORMALIZERS, get_normalizer, list_normalizers, register_normalizer

# Every module of this package is a normalizer: import them all so that they
# register, without a hand-kept list that a new file would have to edit.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "CONV_ROLES", "NORMALIZERS", "Normalizer", "get_normalizer", "list_normalizers",
    "register_normalizer", "tagged_convs",
]
