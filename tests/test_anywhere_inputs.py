"""Inputs that used to end in a traceback or mean something else than
written: each is now one message naming the problem (exit status 2 at the
command line), or read as written."""
import os
import subprocess
import sys
import time

import pytest
import torch

from robustbench_convnorm import evaluate, run
from robustbench_convnorm.config import ConfigError, load_config, load_raw, parse_set
from robustbench_convnorm.data import DataError
from robustbench_convnorm.data.imagefolder import imagefolder
from robustbench_convnorm.leaderboard.build import build_leaderboard
from robustbench_convnorm.leaderboard.records import LeaderboardWarning
from robustbench_convnorm.normalizers import get_normalizer
from robustbench_convnorm.registry import RegistryError

from cli_util import env
from leaderboard_records import make_record, write
from scaleout_util import write_config


def _one_error(capsys, argv):
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------ normalizer options

@pytest.mark.parametrize("name, options, words", [
    ("convnorm", {"affine": "false"}, "option 'affine' must be true or false, got 'false'"),
    ("oni", {"learnable_scale": "false"}, "option 'learnable_scale' must be true or false, got 'false'"),
    ("oni", {"T": 2.5}, "option 'T' must be an integer, got 2.5"),
    ("convnorm", {"eps": "abc"}, "option 'eps' must be a number, got 'abc'"),
    ("ocnn", {"lam": [0.01]}, "option 'lam' must be a number, got [0.01]"),
    ("ocnn", {"lambda": "x"}, "option 'lambda' must be a number, got 'x'"),        # a synonym, checked as lam
    ("tn", {"target": "big"}, "option 'target' must be a number or null, got 'big'"),
    ("cayley", {"scale": 2}, "normalizer 'cayley' has no option 'scale'; allowed: (none)"),
])
def test_normalizer_options_are_checked_against_their_annotations(name, options, words):
    with pytest.raises(RegistryError) as info:
        get_normalizer(name, **options)
    assert words in str(info.value)


def test_well_typed_normalizer_options_still_build():
    assert get_normalizer("oni", T=2.0, learnable_scale=True).T == 2       # 2.0 is an integer
    assert get_normalizer("convnorm", eps=1, affine=False).eps == 1.0      # 1 is a number
    assert get_normalizer("ocnn", **{"lambda": 0.1}).lam == 0.1
    assert get_normalizer("tn", target=None).target is None


def test_a_quoted_boolean_in_a_config_is_one_message(tmp_path, capsys):
    cfg = write_config(tmp_path / "g.yaml", tmp_path / "out", normalizers=[{"name": "convnorm",
                                                                            "options": {"affine": "false"}}])
    err = _one_error(capsys, [str(cfg), "--dry-run"])
    assert "normalizer 'convnorm': option 'affine' must be true or false, got 'false'" in err


# ------------------------------------------------------------ YAML

def test_a_duplicate_key_is_refused_naming_the_file_and_both_lines(tmp_path, capsys):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  epochs: 3\nseeds: [0]\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_raw(cfg)
    assert f"{cfg}: line 4: key 'train' is written twice in one mapping (first at line 1)" in str(info.value)
    err = _one_error(capsys, [str(cfg), "--dry-run"])
    assert "written twice" in err


def test_integers_are_read_as_yaml_1_2_writes_them(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train: {{epochs: 010}}\nseeds: [0x1F, 0o17, 1_000]\noutput_dir: {tmp_path / 'out'}\n"
                   "launcher: {time: 4:00:00}\n")
    loaded = load_config(cfg)
    assert loaded.train.epochs == 10                         # not octal 8
    assert loaded.seeds == [31, 15, 1000]
    assert loaded.launcher["time"] == "4:00:00"              # not base 60 (14400 minutes)
    from robustbench_convnorm.launch.options import resolve
    assert resolve(loaded.launcher).time == 240
    assert parse_set("train.epochs=010") == ("train.epochs", 10)


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    assert cfg.stat().st_size < 2000
    start = time.monotonic()
    err = _one_error(capsys, [str(cfg), "--dry-run"])
    assert time.monotonic() - start < 5
    assert "aliases expand it to more than 100,000 values" in err and str(cfg) in err
    cfg.write_text("a: &x [1, *x]\n")
    assert "an alias refers to a node that contains it" in _one_error(capsys, [str(cfg), "--dry-run"])
    cfg.write_text("base: &b {epochs: 2}\ntrain: {<<: *b, lr: 0.1}\n")   # ordinary aliases and merges still work
    assert load_raw(cfg)["train"] == {"epochs": 2, "lr": 0.1}


def test_a_syntax_error_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("train: [1, 2\nseeds: 3\n")
    err = _one_error(capsys, [str(cfg), "--dry-run"])
    assert f"{cfg}: line 2, column 6: not valid YAML (while parsing a flow sequence: expected ',' or ']'" in err, err


# ------------------------------------------------------------ files and folders

def test_an_over_long_output_dir_is_one_message(tmp_path, capsys):
    for out, words in [(tmp_path / ("x" * 300), "is 300 bytes, more than the 255"),
                       (tmp_path / "/".join(["y" * 200] * 20), "its full path is")]:
        cfg = write_config(tmp_path / "g.yaml", out)
        for extra in (["--dry-run"], []):
            assert words in _one_error(capsys, [str(cfg)] + extra)


def test_missing_data_creates_nothing_in_the_output_dir(tmp_path, capsys):
    cfg = write_config(tmp_path / "g.yaml", tmp_path / "out",
                       data={"source": "imagefolder", "root": str(tmp_path / "no_such_images")})
    assert "no_such_images does not exist" in _one_error(capsys, [str(cfg)])
    assert not (tmp_path / "out").exists()


def _image_folder(root: bytes, bad: str):
    from PIL import Image
    import numpy as np

    for split in (b"train", b"test"):
        for cls in (b"cat", b"d\xffg" if bad == "class" else b"dog"):
            os.makedirs(os.path.join(root, split, cls))
            for i in range(2):
                name = b"x\xff%d.png" % i if bad == "file" else b"%d.png" % i
                Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(os.fsdecode(os.path.join(root, split, cls, name)))


@pytest.mark.parametrize("bad, shown", [("file", "cat/x\\xff0.png"), ("class", "d\\xffg")])
def test_a_name_that_is_not_utf8_in_an_image_folder_is_named(tmp_path, bad, shown):
    root = os.fsencode(tmp_path / "images")
    _image_folder(root, bad)
    with pytest.raises(DataError) as info:
        imagefolder(os.fsdecode(root), cache=False)
    assert shown in str(info.value) and "is not UTF-8 text; rename it" in str(info.value)
    str(info.value).encode("utf-8")  # the message itself prints anywhere


# ------------------------------------------------------------ leaderboard records

def test_a_seed_beyond_64_bits_or_an_infinite_metric_is_named_not_a_traceback(tmp_path):
    write(tmp_path, make_record(seed=0))
    write(tmp_path, make_record(seed=2 ** 70))
    write(tmp_path, make_record(seed=1, pgd20=float("inf")))
    with pytest.warns(LeaderboardWarning) as caught:
        paths = build_leaderboard(tmp_path, plots=False, formats=["md"])
    messages = " | ".join(str(w.message) for w in caught)
    assert "does not fit 64 bits" in messages and "pgd20_acc" in messages and "infinite" in messages
    text = paths["csv"].read_text().lower() + paths["md"].read_text().lower()
    assert "inf" not in text.replace("info", "")


def test_a_killed_leaderboard_build_leaves_no_temporary_file(tmp_path):
    write(tmp_path, make_record(seed=0))
    killer = ("import os, signal, sys\n"
              "from robustbench_convnorm import atomic\n"
              "atomic.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
              "from robustbench_convnorm.leaderboard.build import build_leaderboard\n"
              "build_leaderboard(sys.argv[1], plots=False, formats=['md'])\n")
    proc = subprocess.run([sys.executable, "-c", killer, str(tmp_path)], env=env(), timeout=300)
    assert proc.returncode == -9
    assert list(tmp_path.glob(".*.tmp"))                                 # the killed build's file
    build_leaderboard(tmp_path, plots=False, formats=["md"])
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------ evaluate --checkpoint

def test_evaluate_with_a_checkpoint_of_another_shape_is_one_message(tmp_path, capsys, monkeypatch):
    (tmp_path / "outside_tiny.py").write_text(
        "from torch import nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save({"1.weight": torch.zeros(10, 3 * 8 * 8), "1.bias": torch.zeros(10)}, tmp_path / "wide.pt")
    cfg = write_config(tmp_path / "g.yaml", tmp_path / "out",
                       data={"source": "synthetic", "options": {"n_train": 16, "n_test": 8, "size": 8,
                                                                "num_classes": 4}})
    assert evaluate.main(["--model", "outside_tiny:tiny", "--checkpoint", str(tmp_path / "wide.pt"), str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "2 tensor(s) of another shape (1.weight is (10, 192) there, (4, 192) in the model" in err
