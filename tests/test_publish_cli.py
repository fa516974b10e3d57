"""A project that stands on its own: one console script with subcommands,
--list naming every option with its default, data locations as a user
setting checked before any training, and an evaluator package that a
user's own attacks.py cannot shadow."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import robustbench_convnorm
from robustbench_convnorm import cli, run
from robustbench_convnorm.data import DataError, expand_root
from robustbench_convnorm.registry import accepted_options
from robustbench_convnorm.run.listing import format_default

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 32, "size": 8, "num_classes": 4}},
    "model": {"arch": "convnet", "width": 0.25},
    "normalizers": [{"name": "vanilla"}],
    "train": {"method": "natural", "epochs": 1, "batch_size": 32, "val_examples": 0},
    "eval": {"batch_size": 32, "lipschitz": False, "evaluators": [{"type": "clean"}]},
    "device": "cpu", "threads": 1,
}


def test_the_console_script_is_the_cli_and_each_subcommand_has_its_help(capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["robustbench-convnorm"].partition(":")
    assert getattr(__import__(module, fromlist=[func]), func) is cli.main
    for name in ("run", "evaluate", "leaderboard", "lipschitz"):
        assert cli.main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: robustbench-convnorm {name} "), out[:200]
    assert cli.main([]) == 2 and "commands:" in capsys.readouterr().out
    assert cli.main(["leaderbord"]) == 2
    assert "did you mean 'leaderboard'?" in capsys.readouterr().err


def test_a_real_call_through_the_console_script(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY, output_dir=str(tmp_path / "out"))))
    assert cli.main(["run", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 run(s):" in out and "data: synthetic" in out
    assert cli.main(["leaderboard", str(tmp_path / "nowhere")]) == 2     # the subcommand's own error path
    assert "does not exist" in capsys.readouterr().err


def test_list_shows_every_entry_with_the_options_and_defaults_of_its_signature(capsys):
    from robustbench_convnorm import attacks
    from robustbench_convnorm.data import SOURCES
    from robustbench_convnorm.models import MODELS
    from robustbench_convnorm.normalizers import NORMALIZERS

    assert run.main(["--list"]) == 0
    text = capsys.readouterr().out
    blocks, current = {}, None
    for line in text.splitlines():       # "  name: summary", then its indented "options: ..." lines
        if line.startswith("  ") and not line.startswith("   "):
            current = line.split(":")[0].strip()
            blocks.setdefault(current, []).append("")
        elif line.startswith("    ") and current:
            blocks[current][-1] += " " + line.strip()
    expected = [(NORMALIZERS, lambda c: c.__init__, ()), (attacks.EVALUATORS, lambda c: c.__init__, ()),
                (MODELS, lambda f: f, ("normalizer", "num_classes", "in_channels", "mean", "std", "batchnorm")),
                (SOURCES, lambda f: f, ("root", "download"))]
    for registry, factory, fixed in expected:
        for name in registry.names():
            options = {k: v for k, v in accepted_options(factory(registry.get(name))).items() if k not in fixed}
            shown = [b for b in blocks[name] if all(f"{k}={format_default(v)}" in b for k, v in options.items())]
            assert shown, (name, options, blocks[name])
    assert "train.replays=4" in " ".join(blocks["free"]) and "8/255" in " ".join(blocks["pgd"])
    assert run.main(["--list", "pgd"]) == 0
    narrowed = capsys.readouterr().out
    assert "steps=10" in narrowed and "convnorm" not in narrowed
    assert run.main(["--list", "models"]) == 0
    models = capsys.readouterr().out
    assert all(f"\n  {name}: " in models for name in MODELS.names()) and "pgd" not in models
    assert run.main(["--list", "pgdd"]) == 2
    assert "did you mean 'pgd'?" in capsys.readouterr().err


def test_data_root_reads_the_variable_and_its_default(monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_DATA", "/datasets")
    assert expand_root("${ROBUSTBENCH_DATA:-data}/cifar10-jpeg") == "/datasets/cifar10-jpeg"
    monkeypatch.delenv("ROBUSTBENCH_DATA")
    assert expand_root("${ROBUSTBENCH_DATA:-data}/cifar10-jpeg") == "data/cifar10-jpeg"
    assert expand_root("~/x") == os.path.expanduser("~/x") and expand_root(None) is None
    with pytest.raises(DataError, match=r"names \$\{NOT_SET_HERE\}, which is not set"):
        expand_root("${NOT_SET_HERE}/x")


def test_missing_data_stops_before_any_training_with_one_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_DATA", str(tmp_path / "datasets"))
    raw = dict(TINY, output_dir=str(tmp_path / "out"),
               data={"source": "imagefolder", "root": "${ROBUSTBENCH_DATA:-data}/cifar10-jpeg"})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    for argv in ([str(cfg)], [str(cfg), "--dry-run"]):
        assert run.main(argv) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'datasets' / 'cifar10-jpeg'} does not exist; set ROBUSTBENCH_DATA=DIR" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list((tmp_path / "out" / "runs").glob("*"))            # no run started, none recorded
    (tmp_path / "datasets" / "cifar10-jpeg").mkdir(parents=True)
    (tmp_path / "datasets" / "cifar10-jpeg" / "train.zip").write_bytes(b"")
    assert run.main([str(cfg), "--dry-run"]) == 2
    assert "has no test.zip (or test/)" in capsys.readouterr().err
    cifar = dict(raw, data={"source": "cifar10", "download": False})    # no root: $ROBUSTBENCH_DATA
    cfg.write_text(yaml.safe_dump(cifar))
    assert run.main([str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"files missing under {tmp_path / 'datasets' / 'cifar-10-batches-py'}: data_batch_1" in err
    assert "Automatic download: off (download: false in the config)" in err


def test_data_is_read_where_the_variable_points(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        for label, shade in (("cat", 30), ("dog", 220)):
            folder = tmp_path / "sets" / "tiny" / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (4, 4), (shade, shade, shade)).save(folder / "a.png")
    monkeypatch.setenv("ROBUSTBENCH_DATA", str(tmp_path / "sets"))
    cfg = run.load_config(_write(tmp_path, dict(TINY, output_dir=str(tmp_path / "out"), data={
        "source": "imagefolder", "root": "${ROBUSTBENCH_DATA:-data}/tiny", "options": {"cache": False}})))
    data = run.DataCache().get(cfg.data, 0)
    assert data.classes == ["cat", "dog"] and tuple(data.test_x.shape) == (2, 3, 4, 4)
    assert cfg.data.root == "${ROBUSTBENCH_DATA:-data}/tiny"          # the config (and run id) keeps the text


def _write(tmp_path, raw):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_one_evaluator_package_under_both_names():
    import attacks
    import attacks.pgd
    import robustbench_convnorm.attacks.pgd as pgd

    assert robustbench_convnorm.attacks is attacks and pgd is attacks.pgd
    assert robustbench_convnorm.attacks.EVALUATORS.get("pgd") is attacks.pgd.PGD


USER_ATTACKS = "raise SystemExit('the user attacks.py was imported: exit 3') if __name__ == 'attacks' else None\n"
USER_SCRIPT = """
import sys
sys.modules.pop("attacks", None)
import attacks                      # the user's own module, found first on the path
assert attacks.USERS_OWN, attacks
from robustbench_convnorm import run
import robustbench_convnorm.attacks as ours
assert ours is not attacks and "pgd" in ours.list_evaluators()
sys.exit(run.main(sys.argv[1:]))
"""


def test_a_users_attacks_py_shadows_nothing(tmp_path):
    """From a folder holding an attacks.py of its own, --list and a run work,
    and the user's `import attacks` still gets the user's module."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "attacks.py").write_text(USER_ATTACKS)
    cfg = _write(tmp_path, dict(TINY, output_dir=str(tmp_path / "out")))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "robustbench_convnorm.run", str(cfg), "--list", "evaluators"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "pgd:" in proc.stdout and "done: 1 finished, 0 not" in proc.stdout
    (work / "attacks.py").write_text("USERS_OWN = True\n")
    (work / "script.py").write_text(USER_SCRIPT)
    proc = subprocess.run([sys.executable, "script.py", "--list", "pgd"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "steps=10" in proc.stdout
