"""Config files and ``--set`` overrides: YAML in, one ``ConfigError`` for
anything that is not a readable mapping."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import yaml

from .sections import Config, ConfigError
from .validate import config_from_dict
from .yaml_strict import load_yaml, yaml_problem


def set_path(raw: Dict[str, Any], dotted: str, value, source: str = "<config>") -> None:
    """Set ``a.b.c`` (list items by index: ``normalizers.0.options.T``) in a raw dict."""
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        key = int(part) if isinstance(node, list) and part.isdigit() else part
        try:
            nxt = node[key]
        except (KeyError, IndexError, TypeError):
            if isinstance(node, dict):
                nxt = node[key] = {}
            else:
                raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])}: no such list item")
        if not isinstance(nxt, (dict, list)):
            nxt = node[key] = {}
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"{source}: {dotted}: no such list item")
        node[int(last)] = value
    else:
        node[last] = value


def parse_set(expr: str) -> Tuple[str, Any]:
    """'train.lr=0.01' -> ('train.lr', 0.01); the value is read as YAML."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected key.path=value, e.g. --set train.epochs=2")
    key, text = expr.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {expr!r}: the key is empty")
    try:
        value = load_yaml(text, f"--set {expr!r}") if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {expr!r}: the value is not valid YAML ({err.__class__.__name__})") from None
    except RecursionError:
        raise ConfigError(f"--set {expr!r}: the value is nested too deeply") from None
    return key, value


def load_raw(path) -> Dict[str, Any]:
    """The YAML mapping of a config file; anything else is one ConfigError."""
    path = Path(path)
    example = "give a YAML config file such as configs/quickstart.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: no such config file; {example}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a config file; {example}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}); {example}") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (binary data); {example}") from None
    try:
        raw = load_yaml(text, str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{yaml_problem(err, str(path))}; {example}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    if raw is None:
        raise ConfigError(f"{path} is empty (or only comments), so it would run the default config; write the "
                          f"sections you mean (start from configs/quickstart.yaml)")
    return raw


def load_config(path, overrides: Sequence[str] = ()) -> Config:
    raw = load_raw(path)
    source = str(path)
    for expr in overrides:
        key, value = parse_set(expr)
        set_path(raw, key, value, source=f"{source} (--set {key})")
    return config_from_dict(raw, source=source)


def to_dict(obj) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else copy.deepcopy(obj)
