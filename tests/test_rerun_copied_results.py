"""A results folder copied (or moved) elsewhere, modification times kept
(cp -a, rsync -a), is rebuilt there: the leaderboard stamp of the old folder
names the old folder's files, which say nothing about the copy's (issue 19,
item 8)."""
import json
import shutil

from robustbench_convnorm.launch import merge


def _fake_results(out):
    run = out / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"run_id": "r1", "status": "finished"}))


def _build(out):
    (out / "leaderboard.csv").write_text(f"built in {out}\n")
    return {"csv": str(out / "leaderboard.csv")}


def test_a_copied_results_folder_is_rebuilt_in_its_new_place(tmp_path):
    old = tmp_path / "old"
    _fake_results(old)
    built = []

    def build(out):
        built.append(out)
        return _build(out)

    assert merge.build_once(old, build=build, log=lambda *_: None) == {"csv": str(old / "leaderboard.csv")}
    assert merge.build_once(old, build=build, log=lambda *_: None) and len(built) == 1   # unchanged: skipped
    new = tmp_path / "new"
    shutil.copytree(old, new)                      # copy2: the records keep their modification times
    paths = merge.build_once(new, build=build, log=lambda *_: None)
    assert built == [old, new]
    assert paths == {"csv": str(new / "leaderboard.csv")}
    stamp = json.loads((new / merge.LOCK_DIR / merge.STAMP).read_text())
    assert stamp["output_dir"] == str(new.resolve()) and str(old) not in json.dumps(stamp["paths"])
    assert merge.build_once(new, build=build, log=lambda *_: None) and len(built) == 2  # now up to date there
