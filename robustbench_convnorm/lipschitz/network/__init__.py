"""A sound L2 Lipschitz bound of a whole network, and the certified radii it gives.

One module per job:

- ``registry``: the rule registries (by module type, by function), the
  generic ``lipschitz_bound()`` method rule, ``Unbounded``;
- ``graph``: ``network_bound`` composes the rules along the model's traced
  graph (composition multiplies, a sum adds: residual blocks);
- ``conv_rules``: plain convs (zero-padded: the circular norm on the padded
  grid or F4), ConvNorm2d, CayleyConv2d;
- ``layer_rules``: activations, BatchNorm (eval), linear, pooling, input
  normalization; ``function_rules``: the functional calls of a forward;
- ``margins``: certified L2 radii from logits and the bound.

docs/lipschitz.md ("The network bound") says what is sound and what is not.
"""
from . import conv_rules, function_rules, layer_rules  # noqa: F401  (they register their rules)
from .graph import NetworkBound, network_bound, unwrap_model
from .margins import certified_radii
from .registry import (Arg, Unbounded, find_module_rule, module_bound, register_function_rule,
                       register_module_rule)

__all__ = ["Arg", "NetworkBound", "Unbounded", "certified_radii", "find_module_rule", "module_bound",
           "network_bound", "register_function_rule", "register_module_rule", "unwrap_model"]
