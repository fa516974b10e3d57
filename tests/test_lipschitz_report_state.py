"""model_report describes a model without changing it: a spectral_norm-
parametrized conv in training mode runs a power-iteration step (and updates
its _u/_v buffers) on every read of its weight, so each read must be in
eval mode."""
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from robustbench_convnorm.lipschitz.report import model_report


def test_model_report_leaves_a_training_spectral_norm_model_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3, padding=1)), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3))
    model.train()
    flags = [m.training for m in model.modules()]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = model_report(model, (3, 8, 8), power_iters=5, tn_iters=5, tn_restarts=1, tn_rounds=1)
    after = model.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not (after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]))]
    assert changed == []
    assert [m.training for m in model.modules()] == flags
    assert report["layers"][0]["shape"] == [4, 3, 3, 3]
    assert report["layers"][0]["spectral_norm"] is not None
