"""The one YAML reader of configs and ``--set`` values: PyYAML's safe loader,
made strict where YAML 1.1 gives a silent wrong meaning or no bound.

- A key written twice in one mapping is refused, naming the file and both
  lines (PyYAML keeps the last one: a second ``train:`` section would drop
  the first without a word).
- Integers are YAML 1.2's: ``010`` is 10, not octal 8; ``4:00:00`` is the
  string a time limit means, not the base-60 number 14400; ``0o17`` and
  ``0x1F`` keep their bases. Floats lose base 60 the same way.
- Aliases may not expand the document beyond ``MAX_NODES`` nodes (a 2 kB
  "billion laughs" file would otherwise take minutes and gigabytes later),
  nor refer to themselves.
- Syntax errors name the file, not ``"<unicode string>"``.
"""
from __future__ import annotations

import re
from typing import Any, Dict

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .sections import ConfigError

__all__ = ["MAX_NODES", "load_yaml", "yaml_problem"]

#: nodes a document may hold once its aliases are expanded; a config has a few hundred
MAX_NODES = 100_000

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
#: YAML 1.2 core schema integers (decimal, 0o octal, 0x hex), and 1.1's digit separators (1_000)
_INT_RE = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$")
#: PyYAML's YAML 1.1 floats without base 60 ("1:30.5")
_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                            |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                            |[-+]?\.(?:inf|Inf|INF)
                            |\.(?:nan|NaN|NAN))$""", re.X)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 integers, duplicate keys refused and aliases bounded."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        first: Dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = (key_node.tag, key_node.value)
            line = key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{self.name}: line {line}: key {key_node.value!r} is written twice in one "
                                  f"mapping (first at line {first[key]}); YAML would keep only the last one, "
                                  f"so write it once, merging the two")
            first[key] = line
        return node

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_size(node, self.name)
        return node

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node).replace("_", "")
        try:
            return int(text, 0) if re.match(r"^0[ox]", text) else int(text, 10)
        except ValueError:
            raise ConfigError(f"{self.name}: line {node.start_mark.line + 1}: {text!r} is not an integer") \
                from None


StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_INT, _INT_RE, list("-+0123456789"))
StrictLoader.add_implicit_resolver(_FLOAT, _FLOAT_RE, list("-+0123456789."))
StrictLoader.add_constructor(_INT, StrictLoader.construct_yaml_int)


def _check_size(root: Node, source: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_NODES nodes, or
    refer to a node that contains them (sizes memoized: the graph is walked once)."""
    sizes: Dict[int, int] = {}
    open_nodes = set()

    def size(node: Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_nodes:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: an alias refers to a node that "
                              f"contains it; write the value out")
        open_nodes.add(id(node))
        total = 1
        if isinstance(node, SequenceNode):
            total += sum(size(item) for item in node.value)
        elif isinstance(node, MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_NODES:
            raise ConfigError(f"{source}: line {node.start_mark.line + 1}: its aliases expand it to more than "
                              f"{MAX_NODES:,} values; a config needs far fewer: write it without nested aliases")
        return total

    size(root)


def load_yaml(text: str, source: str) -> Any:
    """The data of one YAML document; ``source`` names the file in every message.
    yaml.YAMLError for a syntax error (its mark names ``source``), ConfigError
    for a duplicate key, a bad integer or an alias bomb."""
    loader = StrictLoader(text)
    loader.name = source  # the marks of syntax errors name this, not "<unicode string>"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(err: yaml.YAMLError, source: str) -> str:
    """A YAML syntax error on one line: the file, the line and column, what is wrong."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{source}: line {mark.line + 1}, column {mark.column + 1}" if mark is not None else source
    words = [w for w in (getattr(err, "context", None), getattr(err, "problem", None)) if w]
    return f"{where}: not valid YAML ({': '.join(words) if words else err.__class__.__name__})"
