"""Issue 20, item 3: the reproducible CPU mode. Its variables are read when
torch loads, so asking for it after that must start the command again; the
mode must reach the launcher's worker processes and every record, with the
CPU model."""
import json
import os
import subprocess
import sys

import pytest

import cli_util
from robustbench_convnorm import reproducible

TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 16, "size": 8, "num_classes": 4}},
    "model": {"arch": "convnet", "width": 0.25},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "natural", "epochs": 1, "batch_size": 32, "val_examples": 0},
    "eval": {"batch_size": 16, "lipschitz": False, "checks": False, "evaluators": [{"type": "clean"}]},
    "device": "cpu", "threads": 1, "speed": {"channels_last": "off"},
}
PINNED = sorted({k for mode in reproducible.MODES.values() for k in mode})


@pytest.fixture(autouse=True)
def _environment_restored():
    """take_option and ensure write os.environ themselves: put it back after each test."""
    keys = PINNED + [reproducible.ENV]
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _clean_env(**extra):
    """A child's environment with no pin of its own (the test machine's shell may have some)."""
    env = cli_util.env(**extra)
    for key in PINNED + [reproducible.ENV]:
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_modes_name_their_variables_and_the_console_option_is_taken_out(monkeypatch):
    for key in PINNED + [reproducible.ENV]:
        monkeypatch.delenv(key, raising=False)
    assert reproducible.pins("avx2") == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
                                         "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
    assert reproducible.pins("strict")["MKL_CBWR"] == "AVX2,STRICT" and reproducible.pins("off") == {}
    assert reproducible.in_effect() == "off"
    rest = reproducible.take_option(["run", "--reproducible", "avx2", "cfg.yaml", "--force"])
    assert rest == ["run", "cfg.yaml", "--force"] and os.environ[reproducible.ENV] == "avx2"
    assert reproducible.requested() == "avx2" and reproducible.requested("strict") == "strict"
    with pytest.raises(ValueError, match="one of off, avx2, strict"):
        reproducible.take_option(["--reproducible=avx512"])


def test_a_mode_asked_for_after_torch_loaded_in_library_code_is_an_error_naming_the_variables(monkeypatch):
    import torch  # noqa: F401  (loaded: the variables can no longer take effect)

    for key in PINNED + [reproducible.ENV]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(reproducible, "_REEXEC_ALLOWED", False)
    with pytest.raises(reproducible.ReproducibleModeError, match="ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"):
        reproducible.ensure("avx2")
    # already in the environment (a parent set it): nothing to do
    for key, value in reproducible.pins("avx2").items():
        monkeypatch.setenv(key, value)
    assert reproducible.ensure("avx2") == "avx2" and reproducible.in_effect() == "avx2"


def test_the_variable_pins_a_child_before_its_torch_loads_and_the_record_says_so(monkeypatch):
    """A child process started with the mode's variable gets the pins at
    ``import robustbench_convnorm`` (before its torch), and records.environment
    names the mode, the variables, torch's capability and the CPU model."""
    script = ("import os, robustbench_convnorm, torch; "
              "print(torch.backends.cpu.get_cpu_capability(), os.environ['MKL_CBWR'], os.environ['ONEDNN_MAX_CPU_ISA'])")
    proc = subprocess.run([sys.executable, "-c", script], cwd=cli_util.ROOT, capture_output=True, text=True,
                          env=_clean_env(**{reproducible.ENV: "avx2"}), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["AVX2", "AVX2", "AVX2"]
    from robustbench_convnorm.records import environment

    for key in PINNED + [reproducible.ENV]:
        monkeypatch.delenv(key, raising=False)
    assert environment("cpu")["reproducible"]["mode"] == "off"
    for key, value in reproducible.pins("avx2").items():
        monkeypatch.setenv(key, value)
    env = environment("cpu")
    assert env["reproducible"]["mode"] == "avx2" and env["reproducible"]["variables"] == reproducible.pins("avx2")
    assert env["cpu_model"] == reproducible.cpu_model() != ""


@pytest.mark.slow
def test_the_config_key_restarts_the_command_and_reaches_the_workers_and_their_records(tmp_path):
    """torch is loaded before the config is read, so the run command starts
    again with the variables; the local launcher's worker (a child process)
    inherits them, and its record says the mode, the pins torch saw and the CPU."""
    out = tmp_path / "out"
    cfg = cli_util.write_config(tmp_path / "cfg.yaml", out, TINY, reproducible="avx2")
    proc = subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", str(cfg), "--launcher", "local",
                           "--workers", "1"], cwd=cli_util.ROOT, capture_output=True, text=True,
                          env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = cli_util.records(out).values()
    env = record["environment"]
    assert env["reproducible"]["mode"] == "avx2"
    assert env["reproducible"]["variables"] == dict(reproducible.pins("avx2"))
    assert env["reproducible"]["aten_cpu_capability"] == "AVX2"     # torch read the pin
    assert env["cpu_model"] == reproducible.cpu_model() and env["cpu_model"]
    # the mode is not part of what is trained: the run id is the one without it
    plain = cli_util.write_config(tmp_path / "plain.yaml", out, TINY)
    listing = subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", str(plain), "--dry-run", "--json"],
                             cwd=cli_util.ROOT, capture_output=True, text=True, env=_clean_env(), timeout=120)
    assert record["run_id"] in listing.stdout


@pytest.mark.slow
def test_the_console_option_pins_before_torch_loads_and_off_records_off(tmp_path):
    out = tmp_path / "out"
    cfg = cli_util.write_config(tmp_path / "cfg.yaml", out, TINY)
    script = ("import sys, json; from robustbench_convnorm import cli; code = cli.main(); "
              "import torch; print('CAPABILITY', torch.backends.cpu.get_cpu_capability()); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, "--reproducible", "strict", "run", str(cfg)],
                          cwd=cli_util.ROOT, capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = cli_util.records(out).values()
    assert record["environment"]["reproducible"]["mode"] == "strict"
    assert record["environment"]["reproducible"]["onednn_enabled"] is False   # strict: ATen's plain conv path
    assert "CAPABILITY AVX2" in proc.stdout
    # without a mode the record says off and names no pin
    out2 = tmp_path / "out2"
    cfg2 = cli_util.write_config(tmp_path / "cfg2.yaml", out2, TINY)
    proc = subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", str(cfg2)], cwd=cli_util.ROOT,
                          capture_output=True, text=True, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (record,) = cli_util.records(out2).values()
    assert record["environment"]["reproducible"]["mode"] == "off"
    assert set(record["environment"]["reproducible"]["variables"].values()) == {None}
    assert json.dumps(record["environment"])  # plain data
