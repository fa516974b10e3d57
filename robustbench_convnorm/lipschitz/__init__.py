"""Spectral norms and bounds of conv layers, and Lipschitz reports of models.

One module per job (docs/lipschitz.md explains each quantity):

- ``spectra``: exact singular values of circular convolutions (Sedghi et
  al. 2019), the polyphase kernel of a strided conv, weight channel spectra.
- ``power_method``: HOPM, the power method of the tensor spectral norm, and the
  search the diagnostic runs (spread starts, confirmation rounds).
- ``tensor_norms``: the bounds from the kernel alone: TN (Grishina et al.,
  ECCV 2024; HOPM gives a lower estimate of this upper bound), F4 (Singla &
  Feizi 2021), flat.
- ``probes``: the actual layer module as an operator: power iteration,
  channel spectra by impulse probes, whether the layer is ``conv2d(x, weight)``.
- ``bounds``: one layer's weight-based columns, TN cross-checked against the
  norms measured.
- ``layers``: which modules are conv layers (tagged or not) and their inputs.
- ``gram``: Gram iteration, an upper bound of the exact circular norm that
  converges to it (Delattre et al., ICML 2023).
- ``network`` (a subpackage, imported on its own as
  ``robustbench_convnorm.lipschitz.network``): the whole network's sound L2
  bound from per-module rules, and certified radii.
- ``report``: ``model_report``; ``formatting``: ``format_report``;
  ``plot``: ``plot_layer_norms``; ``convnorm_table9``: ConvNorm paper, Table 9;
  ``cli``: ``python -m robustbench_convnorm.lipschitz``.

A new bound or diagnostic is one new module here, its name added below.
"""
from .bounds import CHECK_RTOL, all_bounds
from .cli import main
from .formatting import REPORT_COLUMNS, format_report
from .gram import GRAM_ITERS, gram_iteration_bound, matrix_gram_bound
from .layers import InputShapeError, find_conv_layers, is_conv2d_like, layer_shapes
from .plot import plot_layer_norms
from .probes import layer_channel_condition, layer_channel_spectrum, layer_spectral_norm, weight_is_operator
from .report import model_report
from .spectra import (COND_FLOOR, CircularWitness, circular_norm_witness, circular_singular_values,
                      circular_spectral_norm, dilate_kernel, reshape_strided_kernel, weight_channel_condition,
                      weight_channel_spectrum)
from .convnorm_table9 import format_table9, load_records, read_records, table9
from .power_method import (HOPMResult, hopm, hopm_batch, hopm_search, hopm_start_count, hopm_starts, spread_starts,
                   tensor_spectral_norm)
from .tensor_norms import f4_bound, f4_matricizations, flat_bound, tn_bound, tn_scale, tn_value

__all__ = [
    # exact spectra
    "COND_FLOOR", "CircularWitness", "circular_norm_witness", "circular_singular_values", "circular_spectral_norm",
    "dilate_kernel", "reshape_strided_kernel", "weight_channel_condition", "weight_channel_spectrum",
    # HOPM and the kernel bounds
    "GRAM_ITERS", "gram_iteration_bound", "matrix_gram_bound",
    "HOPMResult", "f4_bound", "f4_matricizations", "flat_bound", "hopm", "hopm_batch", "hopm_search",
    "hopm_start_count", "hopm_starts", "spread_starts", "tensor_spectral_norm", "tn_bound", "tn_scale", "tn_value",
    # layers as operators
    "layer_channel_condition", "layer_channel_spectrum", "layer_spectral_norm", "weight_is_operator",
    # one layer's columns, a model's report
    "CHECK_RTOL", "InputShapeError", "all_bounds", "find_conv_layers", "format_report", "is_conv2d_like",
    "layer_shapes", "model_report", "REPORT_COLUMNS",
    # figures, Table 9, CLI
    "format_table9", "load_records", "main", "plot_layer_norms", "read_records", "table9",
]
