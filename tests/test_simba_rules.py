"""SimBA's two step rules, each against a one-image transcription written here
(issue 19, item 10), and the rule that identical inputs get identical scores
(item 9).

- ``minus_first``: the paper's Algorithm 1 (and the authors' one-image
  ``simba_single``): the plus step is tried only when the minus step is not
  accepted.
- ``best_of_both``: the authors' batched ``simba_batch``, which produced the
  published tables: both steps are queried, the minus step is accepted when
  its score is below the current one, the plus step when its score is below
  the current one and the minus step's; queries counted 1 when the minus step
  is accepted, else 2.
"""
import pathlib

import pytest
import torch
import yaml
from torch import nn

from attacks import get_evaluator
from attacks.simba import simba_attack
from test_attacks_simba import D, SHAPE, _basis_image, _orders

ROOT = pathlib.Path(__file__).resolve().parents[1]


class Wavy(nn.Module):
    """A small classifier, not monotone in any pixel (so a plus step can beat
    an accepted minus step, where the rules part), whose output for one row
    does not depend on the other rows, in float64: bit-identical scores
    batched or one at a time."""

    def __init__(self, d=D, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64) * 8)
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.w = nn.Parameter(torch.randn(classes, d, generator=g, dtype=torch.float64) * 0.3)

    def forward(self, x):
        h = torch.sin(x.flatten(1) * self.a + self.b)
        return (h[:, None, :] * self.w[None]).sum(-1)


def _data(n=10, seed=1):
    model = Wavy().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + SHAPE, generator=g, dtype=torch.float64)
    x[:, :, 0, :2] = 0.0   # pixels at 0 and 1: steps there change nothing
    x[:, :, 1, :2] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def transcription(model, x, y, order, *, rule, step, cap, basis="pixel", score="prob"):
    """One image, one query at a time, as each rule reads."""
    delta = torch.zeros_like(x)

    def query(d):
        with torch.no_grad():
            logits = model((x + d).clamp(0, 1)[None])[0]
        p = torch.softmax(logits, 0)
        s = p[y] if score == "prob" else logits[y] - torch.logsumexp(torch.cat([logits[:y], logits[y + 1:]]), 0)
        return float(s), int(logits.argmax())

    current, top = query(delta)
    queries, k = 0, 0
    while top == y and k < cap:
        direction = _basis_image(basis, int(order[k]), x.shape).to(x.dtype) * step
        s_minus, top_minus = query(delta - direction)
        queries += 1
        if rule == "minus_first":
            if s_minus < current:
                delta, current, top = delta - direction, s_minus, top_minus
            else:
                queries += 1
                s_plus, top_plus = query(delta + direction)
                if s_plus < current:
                    delta, current, top = delta + direction, s_plus, top_plus
        else:
            s_plus, top_plus = query(delta + direction)
            if not s_minus < current:
                queries += 1
            if s_plus < min(current, s_minus):
                delta, current, top = delta + direction, s_plus, top_plus
            elif s_minus < current:
                delta, current, top = delta - direction, s_minus, top_minus
        k += 1
    return top != y, queries, k, (x + delta).clamp(0, 1)


def _check_against_transcription(res, model, x, y, orders, **kw):
    for i in range(len(x)):
        ok, q, k, xa = transcription(model, x[i], int(y[i]), orders[i], **kw)
        assert (bool(res.success[i]), int(res.queries[i]), int(res.iterations[i])) == (ok, q, k), i
        torch.testing.assert_close(res.x_adv[i], xa, atol=1e-12, rtol=0)


@pytest.mark.parametrize("rule", ["minus_first", "best_of_both"])
@pytest.mark.parametrize("basis,score,step", [("pixel", "prob", 0.2), ("pixel", "log_odds", 0.3),
                                              ("dct", "prob", 0.12)])
def test_each_rule_matches_its_transcription_query_for_query(rule, basis, score, step):
    model, x, y = _data(n=10)
    orders = _orders(len(x), D)
    res = simba_attack(model, x, y, step=step, basis=basis, batch_size=4, orders=orders, score=score,
                       step_rule=rule)
    _check_against_transcription(res, model, x, y, orders, rule=rule, step=step, cap=D, basis=basis, score=score)


def test_the_two_rules_differ_and_the_other_transcription_tells_them_apart():
    model, x, y = _data(n=10)
    orders = _orders(len(x), D)
    runs = {r: simba_attack(model, x, y, step=0.2, batch_size=10, orders=orders, score="prob", step_rule=r)
            for r in ("minus_first", "best_of_both")}
    assert not torch.equal(runs["minus_first"].queries, runs["best_of_both"].queries)
    with pytest.raises(AssertionError):
        _check_against_transcription(runs["best_of_both"], model, x, y, orders, rule="minus_first", step=0.2, cap=D)


class BatchNoise(nn.Module):
    """A model whose last bits depend on the batch an input is computed in (its
    size) and on the input's memory layout, as real kernels' do (ConvNorm's
    rfft2, CPU convolutions): identical images, different scores by 1e-12."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        wobble = (x.shape[0] % 5) + 3.0 * (not x.is_contiguous())
        return out + 1e-12 * wobble * torch.arange(out.shape[1], dtype=out.dtype)


@pytest.mark.parametrize("rule", ["minus_first", "best_of_both"])
@pytest.mark.parametrize("batch", [1, 3, 10])
def test_a_step_that_changes_no_pixel_is_never_accepted(rule, batch):
    """On a model with batch-dependent rounding, the outcome is the noise-free
    transcription's, at every batch size: the no-op steps on pixels already at
    0 or 1 (the images have some) tie in exact arithmetic and must never win
    on the noise. The starting code accepted them."""
    model, x, y = _data(n=10)
    orders = _orders(len(x), D)
    res = simba_attack(BatchNoise(model), x, y, step=0.2, batch_size=batch, orders=orders, score="log_odds",
                       step_rule=rule)
    _check_against_transcription(res, model, x, y, orders, rule=rule, step=0.2, cap=D, score="log_odds")


def test_the_first_query_scores_the_input_as_later_queries_do():
    """The caller's tensor in another memory layout (channels_last) is scored
    as the later, freshly built inputs are: the starting score is the one of
    the contiguous image (the starting code scored the caller's tensor as
    given, 3e-12 apart here)."""
    model, x, y = _data(n=6)
    noisy = BatchNoise(model)
    res = simba_attack(noisy, x.contiguous(memory_format=torch.channels_last), y, step=0.2, batch_size=6,
                       orders=_orders(len(x), D), score="log_odds", record_scores=True, max_iters=5)
    with torch.no_grad():
        logits = noisy(x.contiguous())
    z = logits.double()
    want = z.gather(1, y[:, None])[:, 0] - torch.logsumexp(z.scatter(1, y[:, None], float("-inf")), 1)
    assert torch.equal(res.score_trace[:, 0], want)


def test_the_rule_is_an_option_named_in_the_record_and_table_2_runs_the_authors_rule():
    ev = get_evaluator("simba", step_rule="best_of_both")
    assert ev.name == "simba_steprulebestofboth"
    assert ev.settings()["step_rule"] == "best_of_both" and "simba_batch" in ev.settings()["step_rule_text"]
    assert get_evaluator("simba").settings()["step_rule"] == "minus_first"
    with pytest.raises(ValueError, match="step_rule"):
        get_evaluator("simba", step_rule="plus_first")
    cfg = yaml.safe_load((ROOT / "configs" / "simba.yaml").read_text())
    simba = [e for e in cfg["eval"]["evaluators"] if e["type"] == "simba"]
    assert simba and all(e.get("step_rule") == "best_of_both" for e in simba)
