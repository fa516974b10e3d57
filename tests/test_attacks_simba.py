"""SimBA: the batched implementation against a slow one-image-at-a-time
reference written here from the paper's description (same coordinate
orders), the stopping rule, the query accounting, and that no accepted step
raises the true-class probability."""
import numpy as np
import pytest
import scipy.fft
import torch
from torch import nn

from attacks import evaluate, get_evaluator
from attacks.simba import dct_matrix, simba_attack, success_curve, summarize


SHAPE = (3, 4, 4)
D = 3 * 4 * 4


class TinyScores(nn.Module):
    """A small nonlinear classifier whose output for one row does not depend on
    the other rows of the batch (elementwise ops and row sums only), in float64,
    so batched and one-at-a-time runs see bit-identical probabilities."""

    def __init__(self, d=D, classes=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64) * 3)
        self.b = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64) + 1.0)
        self.w = nn.Parameter(torch.randn(classes, d, generator=g, dtype=torch.float64) * 0.4)

    def forward(self, x):
        h = torch.tanh(x.flatten(1) * self.a + self.b)
        return (h[:, None, :] * self.w[None]).sum(-1)


def _data(n=16, seed=1):
    model = TinyScores().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + SHAPE, generator=g, dtype=torch.float64)
    # saturated pixels, as real images have: a step there may change nothing (a tie, never accepted)
    x[:, :, 0, :2] = 0.0
    x[:, :, 1, :2] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _orders(n, n_coords, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_coords, generator=g) for _ in range(n)])


def _basis_image(basis, coord, shape):
    """Unit basis vector ``coord`` as an image, built independently of attacks.simba
    (pixel: one-hot; dct: scipy's orthonormal inverse 2-D DCT of a one-hot spectrum)."""
    e = np.zeros(int(np.prod(shape)))
    e[coord] = 1.0
    e = e.reshape(shape)
    if basis == "dct":
        e = np.stack([scipy.fft.idctn(ch, norm="ortho") for ch in e])
    return torch.from_numpy(e)


def reference_simba(model, x, y, order, *, step, cap, basis="pixel", linf_bound=None):
    """Slow SimBA on one image, as the paper describes it: before each
    iteration, stop if the top-1 is no longer y (not counted); try minus, then
    plus; accept a step only if the true-class probability drops (float64 here,
    where it does not saturate)."""
    delta = torch.zeros_like(x)

    def adv(d):
        if linf_bound is not None:
            d = d.clamp(-linf_bound, linf_bound)
        return (x + d).clamp(0, 1)

    def probs(inp):
        with torch.no_grad():
            return torch.softmax(model(inp[None]), 1)[0]

    queries, k = 0, 0
    while True:
        current = probs(adv(delta))
        if current.argmax() != y:
            return True, queries, k, adv(delta)
        if k == cap:
            return False, queries, k, adv(delta)
        direction = _basis_image(basis, int(order[k]), x.shape).to(x.dtype) * step
        queries += 1
        minus = delta - direction
        if probs(adv(minus))[y] < current[y]:
            delta = minus
        else:
            queries += 1
            plus = delta + direction
            if probs(adv(plus))[y] < current[y]:
                delta = plus
        k += 1


@pytest.mark.parametrize("basis,step,cap,linf,score", [
    ("pixel", 0.2, D, None, "prob"),
    ("pixel", 0.2, D, None, "log_odds"),
    ("pixel", 0.35, 20, None, "log_odds"),
    ("pixel", 0.2, D, 0.3, "log_odds"),
    ("dct", 0.12, D, None, "log_odds"),
])
def test_batched_matches_one_image_reference(basis, step, cap, linf, score):
    # in float64 the probability never saturates here, so both scores accept
    # exactly the steps the paper's rule accepts
    model, x, y = _data()
    orders = _orders(len(x), D)
    res = simba_attack(model, x, y, step=step, max_iters=cap, basis=basis, linf_bound=linf,
                       batch_size=5, orders=orders, score=score)
    outcomes = []
    for i in range(len(x)):
        ok, q, k, xa = reference_simba(model, x[i], int(y[i]), orders[i], step=step, cap=cap,
                                       basis=basis, linf_bound=linf)
        outcomes.append(ok)
        assert bool(res.success[i]) == ok, i
        assert int(res.queries[i]) == q, i
        assert int(res.iterations[i]) == k, i
        torch.testing.assert_close(res.x_adv[i], xa, atol=1e-9, rtol=0)
    # the cases are not degenerate: some images broken, some not, queries vary
    assert any(outcomes) and (not all(outcomes) or cap < D)
    assert len(set(res.queries.tolist())) > 3


def test_batch_size_does_not_change_the_result_and_generator_order_is_documented():
    model, x, y = _data(n=8)
    runs = [simba_attack(model, x, y, step=0.2, batch_size=b, generator=torch.Generator().manual_seed(7))
            for b in (1, 3, 64)]
    for other in runs[1:]:
        assert torch.equal(runs[0].queries, other.queries)
        assert torch.equal(runs[0].success, other.success)
        assert torch.equal(runs[0].x_adv, other.x_adv)
    # image i's order is the i-th randperm drawn from the generator
    explicit = simba_attack(model, x, y, step=0.2, batch_size=4, orders=_orders(len(x), D, seed=7))
    assert torch.equal(explicit.queries, runs[0].queries)


@pytest.mark.parametrize("score", ["prob", "log_odds"])
def test_accepted_steps_never_raise_the_true_class_probability(score):
    model, x, y = _data(n=12)
    res = simba_attack(model, x, y, step=0.3, batch_size=4, generator=torch.Generator().manual_seed(3),
                       record_scores=True, score=score)
    trace = res.score_trace
    for i in range(len(x)):
        row = trace[i, : int(res.iterations[i]) + 1]
        assert torch.isfinite(row).all()
        assert (row[1:] <= row[:-1]).all(), f"image {i}: score rose on an accepted step"
        assert torch.isnan(trace[i, int(res.iterations[i]) + 1:]).all()
        # the trace belongs to the returned adversarial input, and both scores
        # are the true-class probability up to a monotone map
        with torch.no_grad():
            p_final = torch.softmax(model(res.x_adv[i:i + 1]), 1)[0, y[i]]
            p_start = torch.softmax(model(x[i:i + 1]), 1)[0, y[i]]
        as_score = p_final if score == "prob" else torch.log(p_final) - torch.log1p(-p_final)
        assert float(as_score) == pytest.approx(float(row[-1]), abs=1e-9)
        assert p_final <= p_start
    assert (trace[:, 1:] < trace[:, :-1]).any(), "no step was ever accepted"


class CountingModel(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.inner(x)


def test_every_model_call_is_a_counted_query_except_one_per_image():
    model, x, y = _data(n=10)
    counting = CountingModel(model)
    res = simba_attack(counting, x, y, step=0.2, batch_size=3, generator=torch.Generator().manual_seed(5))
    assert counting.rows == int(res.queries.sum()) + len(x)
    # 1 or 2 queries per iteration
    assert (res.queries >= res.iterations).all() and (res.queries <= 2 * res.iterations).all()


def test_stopping_rule_cap_and_already_misclassified():
    model, x, y = _data(n=8)
    wrong = (y + 1) % 3
    res = simba_attack(model, x, wrong, step=0.2, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert res.success.all() and (res.queries == 0).all() and torch.equal(res.x_adv, x)
    capped = simba_attack(model, x, y, step=0.01, max_iters=5, batch_size=4,
                          generator=torch.Generator().manual_seed(0))
    assert (capped.iterations <= 5).all()
    assert (capped.iterations[~capped.success] == 5).all()
    with pytest.raises(ValueError, match="max_iters"):
        simba_attack(model, x, y, max_iters=D + 1)


def test_linf_bound_and_range_hold():
    model, x, y = _data(n=8)
    res = simba_attack(model, x, y, step=0.5, basis="dct", linf_bound=0.1, batch_size=8,
                       generator=torch.Generator().manual_seed(0))
    delta = res.x_adv - x
    assert float(delta.abs().max()) <= 0.1 + 1e-12
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1


def test_dct_matrix_is_scipys_orthonormal_dct():
    n = 6
    d = dct_matrix(n)
    torch.testing.assert_close(d @ d.T, torch.eye(n, dtype=torch.float64))
    v = np.random.default_rng(0).normal(size=n)
    np.testing.assert_allclose((d @ torch.from_numpy(v)).numpy(), scipy.fft.dct(v, norm="ortho"), atol=1e-12)


def test_summary_and_curve():
    queries = np.array([10, 20, 30, 400, 6000])
    success = np.array([True, True, False, True, False])
    l2 = np.array([1.0, 2.0, 9.0, 3.0, 9.0])
    linf = np.array([0.2, 0.4, 0.9, 0.2, 0.9])
    s = summarize(queries, success, l2, linf)
    assert s["success_rate"] == pytest.approx(60.0)
    assert s["avg_queries"] == pytest.approx(queries.mean())      # over all attacked images
    assert s["avg_queries_success"] == pytest.approx(430 / 3)
    assert s["median_queries_success"] == pytest.approx(20)
    assert s["mean_l2"] == pytest.approx(2.0) and s["mean_linf"] == pytest.approx(0.8 / 3)
    curve = success_curve(queries, success, max_queries=6144, points=101)
    assert curve["queries"][0] == 0 and curve["queries"][-1] == 6144
    assert curve["success_rate"][0] == 0 and curve["success_rate"][-1] == pytest.approx(60.0)
    assert all(a <= b for a, b in zip(curve["success_rate"], curve["success_rate"][1:]))
    at_20 = curve["success_rate"][np.searchsorted(curve["queries"], 61)]   # first grid point >= 61
    assert at_20 == pytest.approx(40.0)


def test_evaluator_outcome_and_name():
    model, x, y = _data(n=10)
    ev = get_evaluator("simba", step=0.3, n_images=10)
    assert ev.name == "simba_step0p3" and ev.kind == "blackbox"
    assert get_evaluator("simba", basis="dct").name == "simba_dct"
    assert get_evaluator("simba", linf_bound="8/255").name == "simba_linfbound8"
    out = ev.run(model, x, y, generator=torch.Generator().manual_seed(0), batch_size=4)
    pe = out.per_example
    assert set(pe) >= {"correct", "queries", "l2", "linf"}
    assert out.metrics["success_rate"] == pytest.approx(100 * (~pe["correct"]).mean())
    assert out.metrics["avg_queries"] == pytest.approx(pe["queries"].mean())
    assert out.info["curve"]["success_rate"][-1] == pytest.approx(out.metrics["success_rate"])
    assert out.info["max_iters"] == D and out.info["validity"]["outside_range"] == 0
    assert out.info["score"] == "log_odds" and out.metrics["saturated_frac"] == 0.0
    assert get_evaluator("simba", score="prob").name == "simba_scoreprob"
    with pytest.raises(ValueError, match="simba: score must be one of 'log_odds', 'prob'"):
        get_evaluator("simba", score="probability")


class ScaledLogits(nn.Module):
    """One fixed classifier (10 classes on 3x8x8 images) with its logits
    multiplied by ``scale``: the same decision function at every scale."""

    def __init__(self, scale=1.0, d=3 * 8 * 8, hidden=64, classes=10):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("a", torch.randn(hidden, d, generator=g) * 3 / d ** 0.5)
        self.register_buffer("w", torch.randn(classes, hidden, generator=g) / 2)
        self.scale = scale

    def forward(self, x):
        return self.scale * torch.tanh(x.flatten(1) @ self.a.T) @ self.w.T


def _success(score, scale, x, y):
    ev = get_evaluator("simba", score=score, max_iters=20, n_images=len(x))
    out = ev.run(ScaledLogits(scale).eval(), x, y, generator=torch.Generator().manual_seed(0), batch_size=100)
    return out.metrics


def test_log_odds_score_does_not_depend_on_the_logit_scale_and_prob_does():
    x = torch.rand(200, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = ScaledLogits()(x).argmax(1)
    log_odds = {s: _success("log_odds", s, x, y) for s in (1, 30)}
    prob = {s: _success("prob", s, x, y) for s in (1, 30)}
    assert 40 < log_odds[1]["success_rate"] < 90, "degenerate case: SimBA must break some images, not all"
    # the same classifier: the same success rate (paired: same images, same orders) ...
    assert abs(log_odds[30]["success_rate"] - log_odds[1]["success_rate"]) <= 3
    # ... while the probability saturates at x30 and the attack stalls
    assert prob[1]["success_rate"] == pytest.approx(log_odds[1]["success_rate"], abs=3)
    assert prob[30]["success_rate"] < prob[1]["success_rate"] - 20
    # the saturated fraction is recorded whatever the score
    assert prob[1]["saturated_frac"] == log_odds[1]["saturated_frac"] < 0.05
    assert prob[30]["saturated_frac"] == log_odds[30]["saturated_frac"] > 0.5


def test_saturation_is_recorded_for_every_simba_run_and_flagged_under_prob():
    x = (torch.rand(120, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    model = ScaledLogits(30).eval()
    with torch.no_grad():
        y = model(x.float() / 255).argmax(1)
    cfg = {"batch_size": 60, "evaluators": [
        {"type": "simba", "max_iters": 3, "n_images": 50, "name": "simba"},
        {"type": "simba", "score": "prob", "max_iters": 3, "n_images": 50, "name": "simba_prob"}]}
    r = evaluate(model, x, y, cfg, device="cpu", log=lambda s: None)
    assert r.metrics["simba_saturated_frac"] == r.metrics["simba_prob_saturated_frac"] > 0.5
    assert r.per_example["simba_prob_saturated"].sum() == round(50 * r.metrics["simba_prob_saturated_frac"])
    assert "simba_prob:saturated" in r.flags and "simba:saturated" not in r.flags
    assert "score: log_odds" in r.flag_notes["simba_prob:saturated"]
    assert r.details["simba_prob"]["score"] == "prob" and r.details["simba"]["score"] == "log_odds"
