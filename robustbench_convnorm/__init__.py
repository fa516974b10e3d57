"""robustbench_convnorm: a benchmark of conv-layer normalizers under adversarial attack.

    from robustbench_convnorm import load_model
    model = load_model("results/quickstart/runs/<run_id>")   # eval mode, inputs in [0, 1]

The evaluators live in the top-level ``attacks/`` folder and are imported as
``robustbench_convnorm.attacks`` (``_attacks_alias``: a user's own attacks.py
cannot shadow them; ``import attacks`` gives the same modules).
"""
from ._attacks_alias import install as _install_attacks_alias
from .reproducible import apply_from_environment as _apply_reproducible_mode

# $ROBUSTBENCH_CONVNORM_REPRODUCIBLE's pins must be in the environment before torch loads
_apply_reproducible_mode()
_install_attacks_alias()

__all__ = ["load_model"]


def __getattr__(name):
    # lazy: `import robustbench_convnorm` (the registry, the config) stays free of torch
    if name == "load_model":
        from .loading import load_model

        return load_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
