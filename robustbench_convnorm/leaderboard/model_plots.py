"""The figure of one model's section on the page, titled by the model's label:
its training curves (one line per seed, from train_log.csv) and its layer
spectral norms. Returned as PNG bytes for embedding; nothing is written.
One figure per model with fixed margins: matplotlib's cost is per drawing,
and the page draws one per model."""
from __future__ import annotations

from typing import Optional

from .figures import colour, figure, png_bytes, styles
from .groups import Group
from .plots import draw_layer_norms

# train_log.csv columns worth a line, with their legend names and line styles
_ACC_COLUMNS = {"train_acc": ("train (adversarial batches)", "-"), "val_clean_acc": ("validation clean", "--"),
                "val_pgd_acc": ("validation PGD", ":")}


def model_png(g: Group) -> Optional[bytes]:
    logs = [(r.seed, r.train_log()) for r in sorted(g.reps.values(), key=lambda r: str(r.seed))]
    logs = [(s, log) for s, log in logs if log is not None]
    has_layers = any((r.lipschitz or {}).get("layers") for r in g.finished)
    if not logs and not has_layers:
        return None
    caption = ("Left, middle: loss and accuracies the training loop logged after each epoch, one shade per seed. "
               "Right: spectral norm of each conv layer (power iteration), mean over seeds; dotted: σ = 1.")
    fig, (ax_loss, ax_acc, ax_lip) = figure(f"{g.label}: training and layer spectral norms", caption,
                                            size=(12, 3.6), cols=3, tight=False)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.3, top=0.85, wspace=0.3)
    base = colour(g.key[2])
    for i, (seed, log) in enumerate(logs):
        shade = 1.0 if len(logs) == 1 else 0.45 + 0.55 * (i + 1) / len(logs)
        if "loss" in log:
            ax_loss.plot(log["epoch"], log["loss"], color=base, alpha=shade, marker=".", label=f"seed {seed}")
        for col, (name, style) in _ACC_COLUMNS.items():
            if col in log and log[col].notna().any():
                ax_acc.plot(log["epoch"], log[col], color=base, alpha=shade, linestyle=style,
                            label=name if i == 0 else None)
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    if logs:
        ax_acc.legend(fontsize=7)
        if len(logs) > 1:
            ax_loss.legend(fontsize=7)
    if not draw_layer_norms(ax_lip, [g], styles([g])):
        ax_lip.text(0.5, 0.5, "no Lipschitz diagnostics", ha="center", va="center", transform=ax_lip.transAxes)
    return png_bytes(fig, tight=False)
