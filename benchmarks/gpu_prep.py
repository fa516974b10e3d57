"""Prepare the checkout for a lent GPU machine: what must travel with it.

    python -m benchmarks.gpu_prep [--cifar10-jpeg DIR] [--no-download]
    make gpu-prep CIFAR10_JPEG=DIR

The device machine has PyTorch and torchvision but neither torchattacks nor a
network, and it receives only the checkout (tracked and untracked files git
does not ignore) plus the git-ignored folders a call names in ``carry``, 64
MiB in all. This puts the two into git-ignored folders of the checkout:

* ``.whl/``: the torchattacks wheel (pure Python; its own needs, scipy, tqdm,
  requests, numpy and torch, are on the machine already), from PyPI with
  ``pip download``;
* ``.data/cifar10-jpeg/``: ``train.zip`` of the CIFAR-10 JPEG copy, copied
  (hard-linked where possible: a symbolic link would travel as a link only)
  from ``--cifar10-jpeg`` and checked against its sha256, and a ``test.zip``
  of the 1,000 test images the published equal-compute comparison evaluates
  (``configs/cifar10_budget.yaml``: ``eval.n_examples`` 1000, seed 0), cut
  from the checked full one: the full test set (10 MiB) and the checkout's
  published results do not both fit, and no part of the check evaluates
  more than 1,000 test images;

then adds up what would travel and prints the device command (docs/
benchmarks.md, "The GPU check"). Exit code 1 when the total is over 64 MiB.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from benchmarks import cifar_jpeg

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"
DATA = cifar_jpeg.DEFAULT  # where the benchmarks look for the copy
CARRY = (".whl", ".data")
LIMIT_BYTES = 64 * 2 ** 20
TORCHATTACKS = "torchattacks==3.5.1"
#: the CIFAR-10 JPEG copy (quality 75): train.zip 50,000 images, test.zip 10,000
SHA256 = {"train.zip": "f9e11d6283a4afd5286866ecf0496165390e4f1f2305295e0cfdf337d5eead54",
          "test.zip": "b109075b44d9525eb3796e49b290b0a6c1beb17d7f4106c1a074e20947d37829"}
#: the test images that travel: those configs/cifar10_budget.yaml evaluates (eval.n_examples, eval.seed)
TEST_IMAGES, TEST_SEED = 1000, 0
TEST_SUBSET_SHA256 = "4f6298a4702e0fc15d90d9ebe8e746bf379f516207b2937f0abd6a204cf62843"
#: what the carried folders hold once prepared (train.zip, the test subset, the wheel): the
#: checkout must leave room for them (tests/test_gpu_check.py checks the tree against it)
CARRIED_BYTES = 51_841_273 + 1_033_781 + 150_000
#: the one command for the device tool's run (its carry: .whl and .data)
DEVICE_COMMAND = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                  "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit; "
                  "python3 -m benchmarks.gpu_check --data .data/cifar10-jpeg --out $OUT")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(wheels: Path = WHEELS) -> Path:
    found = sorted(wheels.glob("torchattacks-*.whl"))
    if found:
        return found[-1]
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "--dest", str(wheels), TORCHATTACKS], check=True)
    return sorted(wheels.glob("torchattacks-*.whl"))[-1]


def _checked_source(source: Path, name: str) -> Path:
    src = Path(source) / name
    if not src.is_file():
        raise FileNotFoundError(f"{src} is missing: give --cifar10-jpeg the folder holding train.zip and "
                                f"test.zip of the CIFAR-10 JPEG copy")
    if sha256(src) != SHA256[name]:
        raise ValueError(f"{src}: sha256 differs from the CIFAR-10 JPEG copy's ({SHA256[name]})")
    return src


def place_data(source: Path, target: Path = DATA) -> List[Path]:
    """train.zip (matching its sha256) and the evaluated test subset in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    train = target / "train.zip"
    if not (train.is_file() and not train.is_symlink() and sha256(train) == SHA256["train.zip"]):
        src = _checked_source(source, "train.zip")
        train.unlink(missing_ok=True)
        try:
            os.link(src, train)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(src, train)
    test = target / "test.zip"
    if not (test.is_file() and sha256(test) == TEST_SUBSET_SHA256):
        if Path(source).resolve() == target.resolve():
            raise FileNotFoundError(f"{test} is not the evaluated test subset: give --cifar10-jpeg the folder "
                                    f"holding the full copy")
        cifar_jpeg.evaluated_subset(_checked_source(source, "test.zip"), target, TEST_IMAGES, TEST_SEED)
        if sha256(test) != TEST_SUBSET_SHA256:
            raise ValueError(f"{test}: the subset's sha256 is not {TEST_SUBSET_SHA256}")
    return [train, test]


def travelling_bytes(root: Path = ROOT, carry=CARRY) -> Dict[str, int]:
    """Bytes that travel: the files git tracks or would add (not ignored), and
    each carried folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    tree = sum((root / f).stat().st_size for f in listed if f and (root / f).is_file())
    sizes = {"tree": tree}
    for name in carry:
        folder = root / name
        sizes[name] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_prep", description=__doc__.split("\n\n")[0])
    p.add_argument("--cifar10-jpeg", default="", metavar="DIR",
                   help="folder holding train.zip and test.zip (not needed once .data/ holds them)")
    p.add_argument("--no-download", action="store_true", help="do not fetch the wheel (use what .whl/ holds)")
    args = p.parse_args(argv)
    if not args.no_download:
        print(f"wheel: {download_wheel().relative_to(ROOT)}")
    for path in place_data(Path(args.cifar10_jpeg) if args.cifar10_jpeg else DATA):
        print(f"data: {path.relative_to(ROOT)} ({path.stat().st_size / 2 ** 20:.1f} MiB, sha256 checked)")
    sizes = travelling_bytes()
    total = sum(sizes.values())
    print("travels: " + ", ".join(f"{k} {v / 2 ** 20:.2f} MiB" for k, v in sizes.items())
          + f"; total {total / 2 ** 20:.2f} MiB of {LIMIT_BYTES / 2 ** 20:.0f} MiB")
    print(f"\ndevice run: carry {list(CARRY)}, timeout_s 590, command ({len(DEVICE_COMMAND)} characters):\n"
          f"{DEVICE_COMMAND}")
    if total > LIMIT_BYTES:
        print(f"over the limit by {(total - LIMIT_BYTES) / 2 ** 20:.2f} MiB: remove untracked files from the "
              f"checkout (or ignore them) before the call", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
