"""SimBA's outcome must not depend on the batch it runs in (issue 19, item 9):
for every registered normalizer, a tiny untrained model, images with pixels
already at 0 and 1 (where a step changes nothing), batch 1 against one batch
of all images. A model's last bits may differ between the two (ConvNorm's
rfft2 does), so this holds only because a step whose input equals the
current one is never accepted and every query is built the same way."""
import pytest
import torch

from attacks import get_evaluator
from robustbench_convnorm.models import build_model
from robustbench_convnorm.normalizers import get_normalizer, list_normalizers

NORMALIZERS = sorted(list_normalizers())


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    u = torch.rand(n, 3, 8, 8, generator=g)
    x[u < 0.2] = 0.0     # saturated pixels, as real images have: the minus step there is a no-op
    x[u > 0.8] = 1.0     # ... and the plus step here
    return x


def _model(name):
    torch.manual_seed(0)
    model = build_model("convnet", get_normalizer(name), num_classes=10, in_channels=3, mean=[0.49, 0.48, 0.45],
                        std=[0.25, 0.24, 0.26], batchnorm=False, width=0.25)
    return model.eval()


@pytest.mark.parametrize("name,step_rule", [(n, "minus_first") for n in NORMALIZERS]
                         + [("convnorm", "best_of_both"), ("cayley", "best_of_both")])
def test_simba_success_and_queries_do_not_depend_on_the_batch_size(name, step_rule):
    model, x = _model(name), _images()
    with torch.no_grad():
        y = model(x).argmax(1)
    outs = {}
    for batch in (1, len(x)):
        ev = get_evaluator("simba", step=0.2, n_images=len(x), score="prob", max_iters=64, step_rule=step_rule,
                           batch_size=batch)
        outs[batch] = ev.run(model, x, y, generator=torch.Generator().manual_seed(3), batch_size=len(x))
    one, many = outs[1].per_example, outs[len(x)].per_example
    assert (one["correct"] == many["correct"]).all(), name
    assert (one["queries"] == many["queries"]).all(), (name, one["queries"], many["queries"])
    assert len(set(one["queries"].tolist())) > 1  # not a degenerate case
