"""The normalizer interface: a conv-layer factory plus an optional loss penalty."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn


class Normalizer:
    """Base class. A subclass takes its options as keyword arguments of
    ``__init__`` (validated against the signature by ``get_normalizer``: an
    unknown name, or a value its annotation (bool, int, float, str,
    Optional[...]) does not admit, stops there with one message), builds
    the conv layer in ``conv`` with ``nn.Conv2d``'s arguments, and may add a
    term to the training loss in ``penalty``.

    Models tag each conv they build with ``conv_role`` (see ``CONV_ROLES``), so
    a penalty can choose which layers it covers without the model naming it.
    """

    registered_name = "?"
    #: other spellings of options (``{"lambda": "lam"}``): type-checked as the
    #: option they name; ``__init__`` takes them through ``**kwargs``
    option_aliases: Dict[str, str] = {}
    #: Suggested learning rate etc. are not set here: per-normalizer overrides
    #: live in the config (``normalizers: [{name: oni, overrides: {train.lr: 0.01}}]``).

    def conv(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
             padding: int = 0, bias: bool = False) -> nn.Module:
        raise NotImplementedError

    def block(self, channels: int, kernel_size: int = 3) -> Optional[nn.Module]:
        """A whole layer that maps ``channels`` to ``channels`` at the same
        size (e.g. a residual 1-Lipschitz layer, SLL/CPL), for architectures
        built from such layers (``lipconvnet``); None (the default): the model
        uses ``conv`` and its own activation instead."""
        return None

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Extra loss term; zero for normalizers that need none."""
        return _zero_like_model(model)

    def describe(self) -> str:
        return self.registered_name

    @classmethod
    def resolved_options(cls, options: Dict[str, Any]) -> Dict[str, Any]:
        """The options a run is built with: the given ones over every default of
        ``__init__``. The run id hashes these, so a run made under an old default
        is never taken for one made under a new default. A normalizer with
        option aliases overrides this to name each option one way."""
        defaults = {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}
        return {**defaults, **options}


#: Where a conv sits in a model; set by model builders as ``module.conv_role``.
#: "stem": first conv; "block_conv1"/"block_conv2": the two convs of a residual
#: block; "shortcut": a 1x1 projection shortcut; "plain": a conv of a plain
#: (non-residual) network such as VGG.
CONV_ROLES = ("stem", "block_conv1", "block_conv2", "shortcut", "plain")


def tagged_convs(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """(name, module) for every conv a normalizer built, in model order."""
    for name, module in model.named_modules():
        if getattr(module, "conv_role", None) is not None:
            yield name, module


def _zero_like_model(model: nn.Module) -> torch.Tensor:
    for p in model.parameters():
        return p.new_zeros(())
    return torch.zeros(())
