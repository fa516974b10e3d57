"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import os
import platform

import torch


def device_description(device: torch.device) -> str:
    """The GPU's name, or the CPU's model with its logical CPUs and torch's intra-op threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} intra-op threads"
