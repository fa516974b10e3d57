"""The reproducible CPU mode: pin the instruction paths that PyTorch's CPU
kernels choose by themselves, so that a run's numbers do not depend on which
x86 CPU made them.

On its own, a CPU run picks its kernels from the machine: ATen's vectorised
kernels (AVX2 or AVX-512), MKL's GEMM and FFT code paths, and oneDNN's conv
kernels (its ISA, AVX2 up to AVX-512/AMX). Two CPUs then round differently,
and a small model's adversarial accuracy moved by several points between an
Intel Xeon and an AMD EPYC (issue 20). A mode pins them:

``off``
    nothing pinned (the default; fastest).
``avx2``
    ``ATEN_CPU_CAPABILITY=avx2`` (ATen's kernels), ``MKL_CBWR=AVX2`` (MKL's
    conditional numerical reproducibility), ``ONEDNN_MAX_CPU_ISA=AVX2``
    (oneDNN, also under its older name ``DNNL_MAX_CPU_ISA``). Every x86-64
    CPU of the last decade has AVX2.
``strict``
    the ``avx2`` pins with MKL's strict CNR (``MKL_CBWR=AVX2,STRICT``) and
    oneDNN off (``torch.backends.mkldnn.enabled = False``): convolutions take
    ATen's plain path (im2col + MKL GEMM), whose blocking does not follow the
    CPU's cache sizes as oneDNN's does. Slower.

Each variable is read once, when torch (and the libraries inside it) load, so
a mode must be in the environment before ``import torch``. The console
entry points therefore start the command again (``os.execve``, same process
id, same arguments) with the variables set when the mode was asked for
after torch was imported; a child process (a launcher's worker, torchrun's
ranks, a SLURM task) inherits them. Library code cannot re-execute its
caller and gets :class:`ReproducibleModeError` naming the variables to set.

Ask for a mode with the config key ``reproducible``, the console option
``--reproducible MODE`` or ``ROBUSTBENCH_CONVNORM_REPRODUCIBLE=MODE``; each
record says the mode in effect, the variables, ATen's capability and the
CPU model under ``environment.reproducible`` (:func:`describe`).
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

__all__ = ["ENV", "MODES", "ReproducibleModeError", "pins", "requested", "in_effect", "ensure",
           "take_option", "allow_reexec", "describe", "cpu_model"]

#: the environment variable that asks for a mode (and that a re-executed process carries)
ENV = "ROBUSTBENCH_CONVNORM_REPRODUCIBLE"
_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
         "DNNL_MAX_CPU_ISA": "AVX2"}
#: mode -> the variables it sets (before torch loads)
MODES: Dict[str, Dict[str, str]] = {
    "off": {},
    "avx2": dict(_AVX2),
    "strict": {**_AVX2, "MKL_CBWR": "AVX2,STRICT"},
}
#: modes that also turn oneDNN off at run time (the plain ATen conv path)
_PLAIN_CONV = ("strict",)
# set by the console entry points: only there may the process be started again
_REEXEC_ALLOWED = False


class ReproducibleModeError(RuntimeError):
    """A mode was asked for too late (torch already loaded) where the process
    cannot be started again."""


def _check(mode: str) -> str:
    mode = str(mode).strip().lower()
    if mode not in MODES:
        raise ValueError(f"reproducible mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def pins(mode: str) -> Dict[str, str]:
    """The environment variables of ``mode``."""
    return dict(MODES[_check(mode)])


def requested(config_mode: Optional[str] = None) -> str:
    """The mode asked for: the config's when it names one other than ``off``,
    else $ROBUSTBENCH_CONVNORM_REPRODUCIBLE, else ``off``."""
    if config_mode and _check(config_mode) != "off":
        return _check(config_mode)
    return _check(os.environ.get(ENV) or "off")


def _missing(mode: str) -> Dict[str, str]:
    return {k: v for k, v in MODES[mode].items() if os.environ.get(k) != v}


def in_effect() -> str:
    """The strongest mode whose variables are all in this process's
    environment (``off`` when none)."""
    for mode in ("strict", "avx2"):
        if not _missing(mode):
            return mode
    return "off"


def allow_reexec() -> None:
    """Called by the console entry points: there, a mode asked for after
    torch loaded starts the command again instead of failing."""
    global _REEXEC_ALLOWED
    _REEXEC_ALLOWED = True


def take_option(argv: Sequence[str]) -> List[str]:
    """Strip ``--reproducible MODE`` (or ``--reproducible=MODE``) from a
    console command line, put the mode into $ROBUSTBENCH_CONVNORM_REPRODUCIBLE
    and return the rest. A mode other than ``off`` is applied at once."""
    rest: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--reproducible" or arg.startswith("--reproducible="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                raise ValueError(f"--reproducible needs a mode: {', '.join(MODES)}")
            os.environ[ENV] = _check(value)
            apply_from_environment()  # before torch loads: no restart needed
        else:
            rest.append(arg)
        i += 1
    return rest


def _reexec_command() -> List[str]:
    # sys.orig_argv (3.10+) is the interpreter's own command line, "-m module" included
    argv = list(getattr(sys, "orig_argv", []) or [])
    if not argv:
        argv = [sys.executable] + list(sys.argv)
    argv[0] = sys.executable
    return argv


def ensure(mode: str) -> str:
    """Put ``mode`` in effect for this process and its children, and return
    it. Before torch loads: the variables are set. After: nothing to do when
    they are already set (the parent or a re-executed start set them); else
    the console command starts again with them (never returns), and library
    code raises ReproducibleModeError. ``off`` changes nothing (a mode
    inherited from the environment stays)."""
    mode = _check(mode)
    if mode == "off":
        _apply_runtime(in_effect())
        return in_effect()
    missing = _missing(mode)
    if missing:
        if "torch" not in sys.modules:
            os.environ.update(missing)
            os.environ[ENV] = mode
        elif _REEXEC_ALLOWED:
            env = {**os.environ, **missing, ENV: mode}
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, _reexec_command(), env)
        else:
            assignments = " ".join(f"{k}={v}" for k, v in MODES[mode].items())
            raise ReproducibleModeError(
                f"reproducible mode {mode!r} must be set before torch is imported: start Python with "
                f"{assignments} (or run the console command, which does it), or set {ENV}={mode} and "
                f"import robustbench_convnorm before torch")
    _apply_runtime(mode)
    return mode


def _apply_runtime(mode: str) -> None:
    """What a mode sets inside torch rather than through the environment."""
    if mode in _PLAIN_CONV and "torch" in sys.modules:
        import torch

        torch.backends.mkldnn.enabled = False


def apply_from_environment() -> None:
    """At package import, before torch: $ROBUSTBENCH_CONVNORM_REPRODUCIBLE's
    variables go into the environment (nothing when torch is already loaded
    or the variable is unset)."""
    mode = os.environ.get(ENV)
    if not mode or "torch" in sys.modules:
        return
    try:
        mode = _check(mode)
    except ValueError:
        return  # reported when the command checks its mode (ensure)
    os.environ.update(MODES[mode])


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> Dict[str, object]:
    """The record's ``environment.reproducible``: the mode in effect, the
    variables that pin kernels (whoever set them), what torch reports, and
    the CPU model."""
    import torch

    names = sorted({k for m in MODES.values() for k in m})
    cpu = getattr(torch.backends, "cpu", None)
    return {
        "mode": in_effect(),
        "requested": os.environ.get(ENV) or "off",
        "variables": {k: os.environ.get(k) for k in names},
        "aten_cpu_capability": cpu.get_cpu_capability() if cpu is not None else None,
        "onednn_enabled": bool(torch.backends.mkldnn.enabled),
        "cpu_model": cpu_model(),
    }
