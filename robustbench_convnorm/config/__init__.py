"""Configs: YAML -> typed, validated dataclasses -> a grid of runs.

Every problem (unknown key, wrong type, value out of range) stops before any
work with one ``ConfigError`` naming the file, the key path and what is
allowed. Numbers may be written as fractions (``eps: 8/255``) or with an
exponent (``lr: 1e-3``, which PyYAML alone reads as a string); every number
of a config, ``--set`` values and free-form option blocks included, is read
by :func:`parse_number`. Radii and steps live in pixel space, where inputs
are in [0, 1]: outside (0, 1] they are refused, from 0.5 on they warn.
"""
from __future__ import annotations

from ..numbers import NAME_KEYS, NumberError, parse_number, parse_numbers  # noqa: F401  (API)
from .files import load_config, load_raw, parse_set, set_path, to_dict  # noqa: F401
from .grid import RunSpec, expand_grid, make_run_id, run_identity  # noqa: F401
from .sections import (MAX_SEED, AugmentConfig, Config, ConfigError, ConfigWarning, DataConfig,  # noqa: F401
                       EvalConfig, ModelConfig, NormalizerEntry, SpeedConfig, TrainConfig, _opt)
from .validate import PIXEL_OPTIONS, _build, _Ctx, config_from_dict  # noqa: F401

__all__ = ["AugmentConfig", "Config", "ConfigError", "ConfigWarning", "DataConfig", "EvalConfig", "MAX_SEED",
           "ModelConfig", "NormalizerEntry", "PIXEL_OPTIONS", "RunSpec", "SpeedConfig", "TrainConfig",
           "config_from_dict", "expand_grid", "load_config", "load_raw", "make_run_id", "parse_number",
           "parse_numbers", "parse_set", "run_identity", "set_path", "to_dict"]
