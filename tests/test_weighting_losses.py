"""Loss-value weightings DWA, RLW, GLS, FAMO and STCH: each formula against an independent computation, the
logged weights as the true gradient coefficients, gradient accumulation, state round-trips and exact resume,
loud failures, and FAMO's one forward and one backward pass per step."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import crosstask as ct
from crosstask.errors import ConfigError, SolverError
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext
from tests.conftest import tiny_config

NAMES = ["a", "b", "c"]


def make(name: str, loss_names: list[str] = NAMES, **config):
    entry = WEIGHTINGS.get(name)
    return entry.obj(entry.config(name=name, **config), loss_names)


def context(step: int = 0, micro_step: int = 0, accumulate: int = 1) -> BalanceContext:
    return BalanceContext(step, [], micro_step=micro_step, accumulate=accumulate)


def feed(weighting, sequence: list[list[float]], start: int = 0) -> list[torch.Tensor]:
    """Run ``combine`` once per step on the given loss vectors; return the weights of each step."""
    return [
        weighting.combine(torch.tensor(losses), context(start + i))[1].clone()
        for i, losses in enumerate(sequence)
    ]


def random_losses(n: int, k: int = 3, seed: int = 0) -> list[list[float]]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=g) * 2 + 0.1).tolist()


VARIANTS = [
    ("dwa", {"window": 2}),
    ("rlw", {}),
    ("rlw", {"distribution": "dirichlet"}),
    ("gls", {}),
    ("famo", {}),
    ("famo", {"logit_optimizer": "sgd", "min_losses": {"b": 0.05}}),
    ("stch", {}),
    ("stch", {"mu": 0.3, "preference": {"a": 2.0}, "ideal": "running_min"}),
    ("stch", {"log": True, "ideal": "running_min"}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in c.items()) or 'default'}" for n, c in VARIANTS]


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize(("name", "config"), VARIANTS, ids=IDS)
def test_logged_weights_are_the_gradient_coefficients_of_the_objective(name: str, config: dict) -> None:
    weighting = make(name, **config)
    for step, values in enumerate(random_losses(7, seed=1)):
        losses = torch.tensor(values, requires_grad=True)
        objective, weights = weighting.combine(losses, context(step))
        (gradient,) = torch.autograd.grad(objective, losses)
        assert torch.allclose(gradient, weights, rtol=1e-5, atol=1e-7), (step, gradient, weights)
        assert bool(torch.isfinite(weights).all())


@pytest.mark.parametrize(("name", "config"), VARIANTS, ids=IDS)
def test_accumulation_sees_the_unscaled_losses(name: str, config: dict) -> None:
    """The trainer passes L/accumulate per micro-batch: weights as for L, objective (so gradient) halved."""
    values = torch.tensor([0.7, 1.3, 0.4])
    torch.manual_seed(3)
    objective, weights = make(name, **config).combine(values, context())
    torch.manual_seed(3)
    half, half_weights = make(name, **config).combine(values / 2, context(accumulate=2))
    assert torch.allclose(half_weights, weights, rtol=1e-6)
    assert float(half) * 2 == pytest.approx(float(objective), rel=1e-6)


@pytest.mark.parametrize(("name", "config"), VARIANTS, ids=IDS)
def test_state_round_trips_through_a_checkpoint(name: str, config: dict) -> None:
    sequence = random_losses(12, seed=2)
    first = make(name, **config)
    feed(first, sequence[:5])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = make(name, **config)
    second.load_state_dict(torch.load(buffer, weights_only=True))  # what a checkpoint read does
    rng = torch.get_rng_state()
    expected = feed(first, sequence[5:], start=5)
    torch.set_rng_state(rng)
    resumed = feed(second, sequence[5:], start=5)
    for a, b in zip(expected, resumed, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "weighting",
    [
        {"name": "dwa", "window": 5},
        {"name": "famo"},
        {"name": "stch", "ideal": "running_min"},
        {"name": "rlw"},
    ],
    ids=lambda w: w["name"],
)
def test_a_resumed_run_matches_an_uninterrupted_one(tmp_path: Path, weighting: dict) -> None:
    base = tiny_config(
        tmp_path,
        weighting=weighting,
        **{
            "train.steps": 24,
            "train.eval_every": 12,
            "train.deterministic": True,
            "data.eval": {},
        },
    )
    full = ct.run({**base, "name": "full"})
    ct.run({**base, "name": "part", "train": {**base["train"], "steps": 12}})
    resumed = ct.run({**base, "name": "part"}, resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_configs_validate_their_ranges_and_names() -> None:
    for name, bad in [
        ("dwa", {"window": 0}),
        ("dwa", {"temperature": 0.0}),
        ("famo", {"lr": -1.0}),
        ("famo", {"min_losses": {"a": math.inf}}),
        ("stch", {"mu": 0.0}),
        ("stch", {"preference": {"a": 0.0}}),
        ("rlw", {"distribution": "bernoulli"}),
    ]:
        with pytest.raises(ValidationError):
            WEIGHTINGS.get(name).config(name=name, **bad)
    with pytest.raises(ConfigError, match="no loss 'd'"):
        make("famo", min_losses={"d": 0.0})
    with pytest.raises(ConfigError, match="Did you mean 'a'"):
        make("stch", loss_names=["a", "bb"], preference={"aa": 2.0})


# ----------------------------------------------------------------------------- DWA


def test_dwa_weights_follow_the_ratio_of_the_last_two_window_means() -> None:
    sequence = random_losses(8, seed=4)
    weights = feed(make("dwa", window=2, temperature=2.0), sequence)
    for w in weights[:4]:  # the first two windows: weight 1
        assert torch.equal(w, torch.ones(3))
    means = np.array(sequence).reshape(4, 2, 3).mean(axis=1)  # window means
    for window in (2, 3):
        r = means[window - 1] / means[window - 2]
        expected = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
        for step in (2 * window, 2 * window + 1):  # constant within a window
            assert np.allclose(weights[step].numpy(), expected, rtol=1e-6)
            assert float(weights[step].sum()) == pytest.approx(3.0)


def test_dwa_raises_the_weight_of_the_loss_that_stopped_falling() -> None:
    falling, flat = [[1.0, 1.0], [1.0, 1.0], [0.5, 1.0], [0.5, 1.0]], [[0.5, 1.0]]
    w = feed(make("dwa", loss_names=["fast", "stuck"], window=2), falling + flat, start=0)[-1]
    assert float(w[1]) > 1.0 > float(w[0])


def test_dwa_accumulation_averages_the_micro_batches_of_each_step() -> None:
    plain, accumulated = make("dwa", window=2), make("dwa", window=2)
    sequence = random_losses(6, seed=5)
    feed(plain, sequence)
    for step, values in enumerate(sequence):  # each step as two micro-batches with the same mean
        values = torch.tensor(values)
        low, high = values * 0.5, values * 1.5
        for micro, part in enumerate((low, high)):
            accumulated.combine(part / 2, context(step, micro, 2))
    assert torch.allclose(
        plain.current_weights(torch.device("cpu")), accumulated.current_weights(torch.device("cpu"))
    )


# ----------------------------------------------------------------------------- RLW


def test_rlw_draws_softmax_normal_weights_from_the_global_rng_once_per_step() -> None:
    weighting = make("rlw")
    torch.manual_seed(11)
    expected = [torch.softmax(torch.randn(3), dim=0) for _ in range(3)]
    torch.manual_seed(11)
    for step in range(3):
        first = weighting.combine(torch.ones(3), context(step, 0, 2))[1].clone()
        second = weighting.combine(torch.ones(3), context(step, 1, 2))[1].clone()
        assert torch.equal(first, expected[step]) and torch.equal(second, first)
    assert not torch.equal(expected[0], expected[1])


@pytest.mark.parametrize("distribution", ["normal", "uniform", "dirichlet"])
def test_rlw_weights_lie_on_the_simplex_and_favour_no_loss(distribution: str) -> None:
    torch.manual_seed(0)
    weighting = make("rlw", distribution=distribution)
    draws = torch.stack(feed(weighting, [[1.0, 2.0, 3.0]] * 3000))
    assert bool((draws > 0).all()) and torch.allclose(draws.sum(1), torch.ones(len(draws)))
    assert torch.allclose(draws.mean(0), torch.full((3,), 1 / 3), atol=0.02)


# ----------------------------------------------------------------------------- GLS


@pytest.mark.parametrize("seed", range(5))
def test_gls_is_the_geometric_mean_and_balances_relative_changes(seed: int) -> None:
    values = random_losses(1, k=4, seed=seed)[0]
    objective, weights = make("gls", loss_names=list("abcd")).combine(torch.tensor(values), context())
    assert float(objective) == pytest.approx(
        float(np.prod(np.array(values, dtype=np.float64)) ** 0.25), rel=1e-6
    )
    contributions = weights * torch.tensor(values)  # w_i L_i = GM / K for every loss: scale does not matter
    assert torch.allclose(contributions, torch.full((4,), float(objective) / 4), rtol=1e-5)


def test_gls_is_stable_for_extreme_losses_and_refuses_non_positive_ones() -> None:
    objective, weights = make("gls").combine(torch.tensor([1e-30, 1e30, 1.0]), context())
    assert float(objective) == pytest.approx(1.0, rel=1e-4) and bool(torch.isfinite(weights).all())
    with pytest.raises(SolverError, match=r"'gls' at step 4: .*b=-0\.5"):
        make("gls").combine(torch.tensor([1.0, -0.5, 2.0]), context(step=3))
    with pytest.raises(SolverError, match="c=0"):
        make("gls").combine(torch.tensor([1.0, 0.5, 0.0]), context())


# ----------------------------------------------------------------------------- FAMO


def reference_logit_gradient(
    logits: torch.Tensor, previous: list[float], current: list[float]
) -> torch.Tensor:
    """``J_zᵀ δ`` by autograd through the softmax, independently of the weighting's closed form."""
    xi = logits.clone().requires_grad_(True)
    delta = torch.tensor(previous).log() - torch.tensor(current).log()
    return torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)[0]


def test_famo_sgd_logits_follow_algorithm_1() -> None:
    sequence = [[1.0, 1.0, 1.0], [0.5, 0.9, 1.0], [0.45, 0.6, 1.1], [0.4, 0.55, 0.7]]
    famo = make("famo", logit_optimizer="sgd", lr=0.5, weight_decay=0.1)
    expected = torch.zeros(3)
    for step, values in enumerate(sequence):
        weights = famo.combine(torch.tensor(values), context(step))[1]
        if step:
            gradient = reference_logit_gradient(expected, sequence[step - 1], values) + 0.1 * expected
            expected = expected - 0.5 * gradient
        assert torch.allclose(famo.logits, expected, atol=1e-6)
        z = torch.softmax(expected, 0)
        d = torch.tensor(values) + 1e-8
        assert torch.allclose(weights, z / d / (z / d).sum(), rtol=1e-5)  # c·z_i/D_i, summing to 1
    # the first loss fell fastest, the third least: it has gained weight, the first has lost it
    assert float(famo.logits[0]) < 0 < float(famo.logits[2])


def test_famo_adam_first_step_moves_each_logit_against_the_sign_of_its_gradient() -> None:
    famo = make("famo")  # adam, lr 0.025
    feed(famo, [[1.0, 1.0, 1.0], [0.5, 1.0, 1.2]])
    gradient = reference_logit_gradient(torch.zeros(3), [1.0, 1.0, 1.0], [0.5, 1.0, 1.2])
    assert torch.allclose(famo.logits, -0.025 * torch.sign(gradient), atol=1e-5)
    assert float(famo.logits[0]) < 0 < float(famo.logits[2])


def test_famo_refuses_a_loss_below_its_lower_bound() -> None:
    with pytest.raises(SolverError, match=r"'famo' at step 2: .*a=0\.1 \(l\^min 0\.2\)"):
        make("famo", min_losses={"a": 0.2}).combine(torch.tensor([0.1, 1.0, 1.0]), context(step=1))


def test_famo_does_one_forward_and_one_backward_pass_per_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts = {"backward": 0, "grad": 0, "forward": 0}
    backward, grad, linear = torch.autograd.backward, torch.autograd.grad, torch.nn.Linear.forward

    def counting(key, function):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch.autograd, "backward", counting("backward", backward))
    monkeypatch.setattr(torch.autograd, "grad", counting("grad", grad))
    monkeypatch.setattr(torch.nn.Linear, "forward", counting("forward", linear))
    seen = {}
    for name in ("equal", "famo"):
        counts.update(backward=0, grad=0, forward=0)
        config = tiny_config(
            tmp_path,
            name=name,
            weighting={"name": name},
            **{"train.steps": 7, "train.eval_every": None, "data.eval": {}},
        )
        ct.run(config)
        seen[name] = dict(counts)
    assert seen["famo"]["backward"] == 7 and seen["famo"]["grad"] == 0
    assert seen["famo"] == seen["equal"]  # the same forward passes as plain summation


# ----------------------------------------------------------------------------- STCH


@pytest.mark.parametrize("seed", range(5))
def test_stch_matches_the_smooth_tchebycheff_formula(seed: int) -> None:
    values = np.array(random_losses(1, k=4, seed=seed)[0], dtype=np.float64)
    preference = {"a": 0.5, "c": 3.0}
    lam = np.array([0.5, 1.0, 3.0, 1.0])
    stch = make("stch", loss_names=list("abcd"), mu=0.7, preference=preference)
    objective, weights = stch.combine(torch.tensor(values, dtype=torch.float32), context())
    scaled = lam * values / 0.7
    expected = 0.7 * np.log(np.exp(scaled).sum())
    assert float(objective) == pytest.approx(expected, rel=1e-5)
    assert np.allclose(weights.numpy(), lam * np.exp(scaled) / np.exp(scaled).sum(), rtol=1e-5)


def test_stch_tends_to_the_tchebycheff_max_as_mu_shrinks() -> None:
    values = torch.tensor([0.3, 1.7, 1.2])
    worst = float(values.max())
    for mu in (1.0, 0.1, 0.01):
        objective, weights = make("stch", mu=mu).combine(values, context())
        assert worst - 1e-6 <= float(objective) <= worst + mu * math.log(3) + 1e-6
    assert float(weights[1]) > 0.99  # all the weight on the worst loss


def test_stch_running_min_ideal_point_is_the_best_value_so_far() -> None:
    stch = make("stch", ideal="running_min")
    sequence = [[1.0, 2.0, 3.0], [0.5, 2.5, 2.0], [0.8, 2.2, 2.5]]
    feed(stch, sequence)
    assert torch.equal(stch.extra_state()["minimum"], torch.tensor([0.5, 2.0, 2.0]))
    # this batch counts too: a new best value has gap 0
    objective, weights = stch.combine(torch.tensor([0.4, 2.0, 2.0]), context(3))
    assert float(objective) == pytest.approx(math.log(3.0), rel=1e-6)  # all gaps 0: μ log K
    assert torch.allclose(weights, torch.full((3,), 1 / 3))


def test_stch_log_refuses_non_positive_losses() -> None:
    with pytest.raises(SolverError, match=r"'stch' at step 1: .*a=0"):
        make("stch", log=True).combine(torch.tensor([0.0, 1.0, 1.0]), context())
    make("stch").combine(torch.tensor([0.0, -1.0, 1.0]), context())  # raw losses may be anything
