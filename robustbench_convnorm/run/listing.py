"""``--list [NAME]``: every normalizer, evaluator, model, data source and
training method with its options and their defaults, read from the
factories' signatures (registry.accepted_options), so the listing cannot
drift from the code."""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..registry import accepted_options, closest

__all__ = ["Section", "sections", "list_text", "format_default"]

#: arguments a model builder receives from the harness, not from the config's options
_MODEL_FIXED = ("normalizer", "num_classes", "in_channels", "mean", "std", "batchnorm")
#: arguments a data source receives from data.root and data.download
_SOURCE_FIXED = ("root", "download")
_WIDTH = 100
#: a full stop that ends a sentence (not the one of "et al." or "e.g.")
_SENTENCE_END = re.compile(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)\.\s")


@dataclass
class Section:
    kind: str                   # "normalizers"
    how: str                    # where a config names one
    aliases: Tuple[str, ...]    # what --list accepts for the whole section
    entries: List[Tuple[str, str, Dict[str, Any]]]  # (name, summary, {option: default})


def format_default(value: Any) -> str:
    """A default as a config would write it: 8/255, 0.1, null, true, (required)."""
    if value is inspect.Parameter.empty:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        short = repr(value)
        if len(short) <= 8:
            return short
        ticks = value * 255  # a radius such as 8/255 reads best as the config writes it
        if 0 < value < 1 and math.isclose(ticks, round(ticks), abs_tol=1e-9):
            return f"{round(ticks)}/255"
        return f"{value:g}"
    if isinstance(value, str) and not value:
        return '""'
    return str(value)


def _first_sentence(doc: Optional[str]) -> str:
    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    if text.startswith(("Options", "Result name", "Base class")):
        return ""  # the options are listed below, from the signature
    end = _SENTENCE_END.search(text)
    return text if end is None else text[:end.start() + 1]


def _summary(obj: Callable) -> str:
    """The first sentence of the entry's own docstring (not one inherited), else of its module's."""
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    text = _first_sentence(own)
    if not text:
        text = _first_sentence(getattr(inspect.getmodule(obj), "__doc__", None))
    return text if len(text) <= 110 else text[:107].rstrip() + "..."


def _entries(registry, fixed: Tuple[str, ...] = ()) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(name, summary, {option: default}) for every entry of a registry, less
    the arguments the harness passes itself (``fixed``)."""
    entries = []
    for name in registry.names():
        factory = registry.get(name)   # a class's signature is its __init__'s, without self
        options = {k: v for k, v in accepted_options(factory).items() if k not in fixed}
        entries.append((name, _summary(factory), options))
    return entries


def _normalizers() -> Section:
    from ..normalizers import NORMALIZERS

    return Section("normalizers", "normalizers: [{name: NAME, options: {OPTION: VALUE}}]",
                   ("normalizers", "normalizer"), _entries(NORMALIZERS))


def _evaluators() -> Section:
    from .. import attacks

    return Section("evaluators", "eval.evaluators: [{type: NAME, OPTION: VALUE}]",
                   ("evaluators", "evaluator", "attacks"), _entries(attacks.EVALUATORS))


def _models() -> Section:
    from ..models import MODELS

    return Section("models", "model: {arch: NAME, width: W, options: {OPTION: VALUE}}",
                   ("models", "model", "archs"), _entries(MODELS, fixed=_MODEL_FIXED))


def _sources() -> Section:
    from ..data import SOURCES

    return Section("data sources", "data: {source: NAME, root: DIR, options: {OPTION: VALUE}}",
                   ("data sources", "data", "sources", "source"), _entries(SOURCES, fixed=_SOURCE_FIXED))


def _methods() -> Section:
    from ..config import TrainConfig
    from ..training import METHODS

    defaults = asdict(TrainConfig())
    entries = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        options = {f"train.{key}": defaults[key] for key in getattr(cls, "train_options", ())}
        entries.append((name, _summary(cls), options))
    return Section("training methods", "train: {method: NAME, OPTION: VALUE}",
                   ("training methods", "methods", "method", "train"), entries)


def sections() -> List[Section]:
    return [_normalizers(), _evaluators(), _models(), _sources(), _methods()]


def _entry_lines(name: str, summary: str, options: Dict[str, Any]) -> List[str]:
    lines = [f"  {name}" + (f": {summary}" if summary else "")]
    shown = ", ".join(f"{k}={format_default(v)}" for k, v in options.items())
    text = f"options: {shown}" if shown else "options: none"
    line = "      "
    for word in text.split(" "):  # wrap at the terminal's usual width, between options
        if len(line) + len(word) + 1 > _WIDTH and line.strip():
            lines.append(line.rstrip())
            line = "        "
        line += word + " "
    lines.append(line.rstrip())
    return lines


def list_text(name: Optional[str] = None) -> str:
    """The listing; ``name`` narrows it to one kind ('evaluators') or to the
    entries of that name ('pgd'). An unknown name is a ValueError naming the
    closest one."""
    every = sections()
    if name:
        wanted = name.strip().lower()
        chosen = [s for s in every if wanted in s.aliases]
        if not chosen:
            chosen = [Section(s.kind, s.how, s.aliases, [e for e in s.entries if e[0] == name]) for s in every]
            chosen = [s for s in chosen if s.entries]
        if not chosen:
            known = [a for s in every for a in s.aliases[:1]] + [e[0] for s in every for e in s.entries]
            raise ValueError(f"--list {name}: no such kind or entry{closest(name, known)}; "
                             f"kinds: {', '.join(s.kind for s in every)}")
        every = chosen
    lines: List[str] = []
    for section in every:
        lines += [f"{section.kind}:  (in a config: {section.how})"]
        for entry in section.entries:
            lines += _entry_lines(*entry)
        lines.append("")
    return "\n".join(lines).rstrip()
