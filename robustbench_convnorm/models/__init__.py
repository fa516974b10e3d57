"""Model builders (resnet18, vgg16, convnet, lipconvnet); each registers itself."""
from . import convnet, lipconvnet, resnet, vgg  # noqa: F401  (registration)
from .registry import MODELS, build_model, list_models, register_model

__all__ = ["MODELS", "build_model", "list_models", "register_model"]
