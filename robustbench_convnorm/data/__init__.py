"""Data sources (each registers itself) and device-resident batching."""
from . import cifar, imagefolder, small  # noqa: F401  (registration)
from .base import SOURCES, DataError, ImageData, list_sources, load_source, register_source
from .batches import DeviceBatches, random_crop_flip, to_float
from .location import DATA_ENV, expand_root, locate_data
from .prepare import load_full, prepare_data, stratified_subset, symmetric_label_noise

__all__ = ["DATA_ENV", "SOURCES", "DataError", "DeviceBatches", "ImageData", "expand_root", "list_sources",
           "load_full", "load_source", "locate_data", "prepare_data", "random_crop_flip", "register_source", "stratified_subset",
           "symmetric_label_noise", "to_float"]
