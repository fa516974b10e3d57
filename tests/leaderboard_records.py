"""Run records for the leaderboard tests: hand-made ones (as records.py writes
them), their per-example outcomes, and real ones from tiny runs of the run command."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

EPS = 8 / 255
ROOT = Path(__file__).resolve().parents[1]


def make_record(*, normalizer="convnorm", seed=0, status="finished", batchnorm=True, dataset="cifar10",
                arch="resnet18", train_method="free", train_eps=EPS, seeds=None, clean=80.0,
                fgsm=50.0, pgd10=45.0, pgd20=44.0, worst=None, simba=None, flags=(), error=None,
                params=11_000_000, sec_per_epoch=20.0, extra_evals=None, data_note=None, **over):
    """A record.json as records.py writes it; accuracies in percent. Like the run CLI, config.seeds
    holds the run's own seed unless `seeds` gives a whole list."""
    if seeds is None:
        seeds = [] if seed is None else [seed]
    metrics, evaluations = {}, {}
    if status == "finished":
        metrics = {"clean_acc": clean, "fgsm_acc": fgsm, "pgd10_acc": pgd10, "pgd20_acc": pgd20,
                   "worst_case_acc": pgd20 if worst is None else worst,
                   "lip_product_log10": 3.5, "mean_layer_spectral_norm": 1.2}
        evaluations = {
            "clean": {"kind": "clean", "acc": clean},
            "fgsm": {"kind": "whitebox", "eps": EPS, "acc": fgsm},
            "pgd10": {"kind": "whitebox", "eps": EPS, "step": 2 / 255, "steps": 10, "restarts": 1,
                      "acc": pgd10},
            "pgd20": {"kind": "whitebox", "eps": EPS, "step": 2 / 255, "steps": 20, "restarts": 1,
                      "acc": pgd20},
        }
        if simba is not None:
            rate, queries = simba
            metrics.update(simba_success_rate=rate, simba_avg_queries=queries)
            evaluations["simba"] = {"kind": "blackbox", "step": 0.2, "max_iters": 3072,
                                    "success_rate": rate, "avg_queries": queries,
                                    "curve": {"queries": [0, 1000, 2000, 3000],
                                              "success_rate": [0, rate / 3, rate / 2, rate]}}
        for name, ev in (extra_evals or {}).items():
            evaluations[name] = {k: v for k, v in ev.items() if k != "acc"}
            metrics[f"{name}_acc"] = ev["acc"]
    rec = {
        "schema": 1,
        "run_id": f"{dataset}-{arch}-{normalizer}{'-bn' if batchnorm else ''}-{train_method}-s{seed}",
        "status": status,
        "error": error,
        "dataset": dataset, "arch": arch, "normalizer": normalizer, "normalizer_options": {},
        "batchnorm": batchnorm, "train_method": train_method, "train_eps": train_eps, "seed": seed,
        "grid_axes": {},
        "config": {"seeds": list(seeds), "dataset": {"name": dataset}, "epochs": 30},
        "metrics": metrics,
        "evaluations": evaluations,
        "params": params,
        "timings": {"train_seconds": sec_per_epoch * 30, "train_seconds_per_epoch": sec_per_epoch,
                    "eval_seconds": 5.0, "epochs_done": 30 if status == "finished" else 3},
        "flags": list(flags),
        "lipschitz": None,
        "versions": {"torch": "2.x"}, "git_sha": "abc123", "device": "cpu",
        "created": "2026-01-01T00:00:00", "data_note": data_note,
    }
    rec.update(over)
    return rec


def write(results, rec, name=None):
    d = results / "runs" / (name or rec["run_id"])
    d.mkdir(parents=True, exist_ok=True)
    (d / "record.json").write_text(json.dumps(rec))
    return d / "record.json"


# Three models, three seeds each; hand-chosen numbers.
GRID = {
    "sn": {"clean": [82.0, 83.0, 82.5], "fgsm": [52.0, 52.5, 52.6], "pgd10": [45.5, 46.0, 45.6],
           "pgd20": [44.0, 45.0, 44.5]},
    "convnorm": {"clean": [83.0, 83.5, 83.2], "fgsm": [53.0, 52.8, 52.9], "pgd10": [46.0, 46.3, 46.1],
                 "pgd20": [45.0, 44.5, 45.1]},
    "oni": {"clean": [80.5, 80.9, 80.7], "fgsm": [48.3, 48.1, 48.6], "pgd10": [42.3, 42.0, 42.6],
            "pgd20": [41.0, 41.4, 40.9]},
}


def write_per_example(results, rec, correct, name=None):
    """per_example.csv beside a written record: {column: bools}, one row per test index."""
    d = results / "runs" / (name or rec["run_id"])
    n = len(next(iter(correct.values())))
    table = pd.DataFrame({"index": np.arange(n), **{k: np.asarray(v, dtype=bool) for k, v in correct.items()}})
    table.to_csv(d / "per_example.csv", index=False)
    return d / "per_example.csv"


# A config the run command trains in a few seconds on the CPU.
TINY = {
    "data": {"source": "synthetic", "options": {"n_train": 64, "n_test": 40, "size": 8, "num_classes": 4},
             "augment": {"crop_padding": 1, "flip": False}},
    "model": {"arch": "convnet", "width": 0.5},
    "normalizers": [{"name": "vanilla"}, {"name": "sn"}],
    "train": {"method": "free", "epochs": 2, "batch_size": 32, "lr": 0.05, "replays": 2, "schedule": "cosine",
              "val_examples": 8, "val_pgd_steps": 1},
    "eval": {"batch_size": 40, "lipschitz": True,
             "evaluators": [{"type": "clean"}, {"type": "fgsm", "eps": "8/255"},
                            {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 2, "name": "pgd2"},
                            {"type": "pgd", "eps": "8/255", "step": "2/255", "steps": 4, "name": "pgd4"}]},
    "seeds": [0],
    "device": "cpu",
}


def tiny_config(folder: Path, out: Path, **changes) -> Path:
    """TINY with top-level sections replaced, written as YAML; its output_dir is `out`."""
    raw = json.loads(json.dumps(TINY))
    raw.update(changes)
    raw["output_dir"] = str(out)
    path = folder / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def records(out_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(out_dir).glob("runs/*/record.json"))}
