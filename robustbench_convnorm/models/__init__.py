"""Model builders (resnet18, vgg16, convnet, lipconvnet, preact_resnet18,
wide_resnet); each registers itself."""
from . import convnet, lipconvnet, preact_resnet, resnet, vgg, wide_resnet  # noqa: F401  (registration)
from .registry import MODELS, build_model, list_models, register_model

__all__ = ["MODELS", "build_model", "list_models", "register_model"]
