"""Meta-learning: episodes, the meta-learners' gradients against closed forms, and runs end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import crosstask as ct
from crosstask.data.episodes import EpisodeConfig, EpisodeSampler, EpisodeStream, class_part, episode_sampler
from crosstask.engine.method import StreamSpec
from crosstask.errors import ConfigError, DataError
from crosstask.evaluation.episodes import mean_and_ci95
from crosstask.methods.meta_learning import MetaLearner
from crosstask.registry import METHODS

META = sorted(n for n in METHODS.names() if getattr(METHODS.get(n).obj, "reads_episodes", False))


def clusters(
    classes: int = 12, per_class: int = 10, dim: int = 4, spread: float = 0.1, seed: int = 0
) -> ct.ArrayDataset:
    """Gaussian clusters around random unit-norm centres scaled by 5: planted, separable classes."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1) * 5
    y = torch.arange(classes).repeat_interleave(per_class)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return ct.ArrayDataset(x, {"y": y})


# ----------------------------------------------------------------------------- episodes


def test_an_episode_holds_ways_classes_relabeled_with_disjoint_support_and_query() -> None:
    data = clusters(classes=12, per_class=10)
    config = EpisodeConfig(ways=4, shots=2, queries=3)
    sampler = EpisodeSampler(data, config, "y", "train", seed=1)
    support, support_y, query, query_y = sampler.indices(0)
    assert (
        support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        and query_y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    )
    assert not set(support.tolist()) & set(query.tolist())
    original = data.y["y"]
    for way in range(4):  # one dataset class per way, the same in support and query
        classes = set(original[support[support_y == way]].tolist()) | set(
            original[query[query_y == way]].tolist()
        )
        assert len(classes) == 1
    again = EpisodeSampler(data, config, "y", "train", seed=1).indices(0)
    assert all(torch.equal(a, b) for a, b in zip(again, (support, support_y, query, query_y), strict=True))
    other = EpisodeSampler(data, config, "y", "train", seed=2).indices(0)
    assert not torch.equal(other[0], support)


def test_the_class_split_is_a_deterministic_partition() -> None:
    classes = torch.arange(20)
    parts = {p: class_part(classes, EpisodeConfig(classes=p, class_seed=3)) for p in ("train", "val", "test")}
    assert [len(v) for v in parts.values()] == [12, 4, 4]
    assert sorted(torch.cat(list(parts.values())).tolist()) == list(range(20))
    assert torch.equal(parts["test"], class_part(classes, EpisodeConfig(classes="test", class_seed=3)))
    assert not torch.equal(parts["test"], class_part(classes, EpisodeConfig(classes="test", class_seed=4)))
    with pytest.raises(ValueError, match="summing to 1"):
        EpisodeConfig(class_fractions=(0.5, 0.2, 0.2))


def test_an_episode_stream_resumes_from_its_state() -> None:
    sampler = EpisodeSampler(clusters(), EpisodeConfig(ways=3, shots=1, queries=2, tasks=2), "y", "s", seed=0)
    stream = EpisodeStream(sampler)
    first = [next(stream) for _ in range(3)]
    resumed = EpisodeStream(sampler)
    resumed.load_state_dict({"consumed": 2})
    assert torch.equal(next(resumed).query, first[2].query)
    assert first[0].support.shape == (2, 3, 4) and first[0].query.shape == (2, 6, 4)


def test_samples_without_a_class_are_never_drawn() -> None:
    data = clusters(classes=4, per_class=6)
    data.y["y"][::2] = -1  # half the samples have no class
    sampler = EpisodeSampler(data, EpisodeConfig(ways=4, shots=1, queries=2), "y", "train")
    for i in range(20):
        support, _, query, _ = sampler.indices(i)
        assert (data.y["y"][torch.cat([support, query])] >= 0).all()


def test_episodes_that_the_data_cannot_fill_are_one_clear_error() -> None:
    data = clusters(classes=4, per_class=3)
    with pytest.raises(
        DataError, match=r"1 support \+ 5 query.*4 of 4 classes have fewer.*lower shots or queries"
    ):
        EpisodeSampler(data, EpisodeConfig(ways=2, shots=1, queries=5), "y", "train")
    with pytest.raises(DataError, match="5-way episodes need at least 5 classes"):
        EpisodeSampler(data, EpisodeConfig(ways=5, shots=1, queries=1), "y", "train")
    with pytest.raises(ConfigError, match="label 'nope'"):
        EpisodeSampler(data, EpisodeConfig(ways=2, shots=1, queries=1), "nope", "train")


def test_fixed_episodes_come_from_the_labels() -> None:
    """Two fixed 3-way episodes (Lake's runs): support role 0, queries role 1, classes relabeled per episode."""
    x = torch.randn(14, 2)
    labels = {
        "y": torch.tensor([5, 7, 9, 9, 5, 7, 2, 3, 4, 4, 4, 3, 2, 2]),
        "run": torch.tensor([0] * 6 + [1] * 8),
        "role": torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1]),
    }
    sampler = EpisodeSampler(ct.ArrayDataset(x, labels), EpisodeConfig(ways=3, fixed={}), "y", "runs")
    assert sampler.count == 2
    support, support_y, query, query_y = sampler.indices(1)
    assert support.tolist() == [6, 7, 8] and support_y.tolist() == [0, 1, 2]  # classes 2, 3, 4
    assert query.tolist() == [9, 10, 11, 12, 13] and query_y.tolist() == [2, 2, 1, 0, 0]
    bad = {
        **labels,
        "role": torch.tensor([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1]),
    }  # class 4 lost its support
    with pytest.raises(DataError, match="fixed episode 1 has 2 support classes"):
        EpisodeSampler(ct.ArrayDataset(x, bad), EpisodeConfig(ways=3, fixed={}), "y", "runs")


def test_the_confidence_interval_is_196_standard_errors() -> None:
    values = torch.tensor([50.0, 60.0, 70.0, 80.0])
    mean, ci = mean_and_ci95(values)
    assert mean == 65.0 and ci == pytest.approx(1.96 * values.std().item() / 2)


# ----------------------------------------------------------------------------- gradients against closed forms


class Identity(nn.Module):
    num_features = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def linear_learner(name: str, **options: Any) -> tuple[MetaLearner, nn.Linear]:
    """A meta-learner over a linear classifier on 3-d inputs (2-way episodes), in float64."""
    torch.manual_seed(0)
    model = ct.MultiTaskModel(Identity(), [ct.Task("y", num_classes=2)]).double()
    entry = METHODS.get(name)
    config = entry.config(name=name, **options)
    spec = StreamSpec("train", True, ("y",), EpisodeConfig(ways=2, shots=2, queries=3))
    return entry.obj(config, model, [spec]), model.heads["y"]


def episode(seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    xs, xq = (
        torch.randn(4, 3, generator=g, dtype=torch.float64),
        torch.randn(6, 3, generator=g, dtype=torch.float64),
    )
    return xs, torch.tensor([0, 0, 1, 1]), xq, torch.tensor([0, 0, 0, 1, 1, 1])


def closed_form_step(
    w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, first_order: bool
):
    """One gradient step of softmax cross-entropy on a linear model, with the gradient written out:
    dL/dW = (softmax(Wx + b) − onehot)ᵀ x / n, dL/db = mean(softmax − onehot)."""
    residual = torch.softmax(x @ w.T + b, 1) - F.one_hot(y, 2).double()
    gw, gb = residual.T @ x / len(x), residual.mean(0)
    if first_order:
        gw, gb = gw.detach(), gb.detach()
    return w - lr * gw, b - lr * gb


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_the_maml_meta_gradient_equals_the_unrolled_closed_form(first_order: bool, steps: int) -> None:
    learner, head = linear_learner("maml", inner_lr=0.5, inner_steps=steps, first_order=first_order)
    xs, ys, xq, yq = episode()
    loss, _ = learner.episode_loss(xs, ys, xq, yq, 2)
    got = torch.autograd.grad(loss, [head.weight, head.bias])

    def unrolled(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        for _ in range(steps):
            w, b = closed_form_step(w, b, xs, ys, 0.5, first_order)
        return F.cross_entropy(xq @ w.T + b, yq)

    w, b = head.weight.detach().clone().requires_grad_(), head.bias.detach().clone().requires_grad_()
    expected = torch.autograd.grad(unrolled(w, b), [w, b])
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e, atol=1e-12, rtol=1e-10)
    if not first_order:  # and the meta-loss's finite differences
        eps = 1e-6
        for i in range(w.numel()):
            bump = torch.zeros_like(w).flatten()
            bump[i] = eps
            bump = bump.view_as(w)
            numeric = ((unrolled(w + bump, b) - unrolled(w - bump, b)) / (2 * eps)).detach()
            assert float(got[0].flatten()[i]) == pytest.approx(float(numeric), abs=1e-7)


def test_fomaml_differs_from_maml_by_the_second_order_term_only() -> None:
    xs, ys, xq, yq = episode(3)
    grads = {}
    for name in ("maml", "fomaml"):
        learner, head = linear_learner(name, inner_lr=0.5)
        loss, _ = learner.episode_loss(xs, ys, xq, yq, 2)
        grads[name] = torch.autograd.grad(loss, [head.weight])[0]
    learner, head = linear_learner("maml", inner_lr=0.5)
    w, b = closed_form_step(head.weight.detach(), head.bias.detach(), xs, ys, 0.5, True)
    w.requires_grad_(True)
    at_adapted = torch.autograd.grad(F.cross_entropy(xq @ w.T + b, yq), [w])[0]  # ∇L_query(θ')
    torch.testing.assert_close(grads["fomaml"], at_adapted)
    assert not torch.allclose(grads["maml"], grads["fomaml"])


def test_metasgd_learns_its_step_sizes_and_equals_maml_at_its_initial_step_size() -> None:
    xs, ys, xq, yq = episode(4)
    maml, maml_head = linear_learner("maml", inner_lr=0.3)
    metasgd, head = linear_learner("metasgd", inner_lr=0.3)
    loss_maml, _ = maml.episode_loss(xs, ys, xq, yq, 2)
    loss, _ = metasgd.episode_loss(xs, ys, xq, yq, 2)
    torch.testing.assert_close(loss, loss_maml)
    rates = list(metasgd.modules["lr"].parameters())
    grads = torch.autograd.grad(loss, [head.weight, *rates])
    torch.testing.assert_close(grads[0], torch.autograd.grad(loss_maml, [maml_head.weight])[0])
    assert all(g.abs().sum() > 0 for g in grads[1:])  # the step sizes are meta-learned


def test_the_reptile_update_is_its_formula() -> None:
    """θ ← θ + ε (φ − θ), with φ the inner SGD steps on the episode's support and query samples."""
    learner, head = linear_learner("reptile", inner_lr=0.2, inner_steps=3)
    xs, ys, xq, yq = episode(5)
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    loss, _ = learner.episode_loss(xs, ys, xq, yq, 2)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)  # ε = 0.5
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
    w, b = w0, b0
    for _ in range(3):
        w, b = closed_form_step(w, b, x, y, 0.2, True)
    torch.testing.assert_close(head.weight.detach(), w0 + 0.5 * (w - w0))
    torch.testing.assert_close(head.bias.detach(), b0 + 0.5 * (b - b0))


def anil_learner(**options: Any) -> tuple[MetaLearner, ct.MultiTaskModel, nn.Module]:
    """ANIL (inner step 0.5) on a seeded tanh layer with a 2-class head: the learner, the model, the body."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    body.num_features = 4
    model = ct.MultiTaskModel(body, [ct.Task("y", num_classes=2)])
    spec = StreamSpec("train", True, ("y",), EpisodeConfig(ways=2, shots=2, queries=3))
    entry = METHODS.get("anil")
    return entry.obj(entry.config(name="anil", inner_lr=0.5, **options), model, [spec]), model, body


def test_anil_adapts_the_head_only_and_trains_the_body() -> None:
    learner, model, body = anil_learner()
    xs, ys, xq, yq = (t.float() if t.is_floating_point() else t for t in episode(6))
    loss, _ = learner.episode_loss(xs, ys, xq, yq, 2)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, list(body.parameters())))
    # the same as MAML restricted to the head: adapt the head by hand and compare the query loss
    head = model.heads["y"]
    w, b = head.weight, head.bias
    z_support, z_query = body(xs), body(xq)
    residual = torch.softmax(z_support @ w.T + b, 1) - F.one_hot(ys, 2).float()
    w2, b2 = w - 0.5 * residual.T @ z_support / 4, b - 0.5 * residual.mean(0)
    torch.testing.assert_close(loss, F.cross_entropy(z_query @ w2.T + b2, yq))


# ----------------------------------------------------------------------------- runs


def meta_config(tmp_path: Path, method: str | dict[str, Any], **train: Any) -> dict[str, Any]:
    return {
        "name": method if isinstance(method, str) else method["name"],
        "output_dir": str(tmp_path),
        "tasks": [{"name": "digit", "num_classes": 3}],
        "data": {
            "train": {
                "train": {
                    "dataset": {"name": "digits"},
                    "episodes": {"ways": 3, "shots": 1, "queries": 2, "tasks": 2, "classes": "train"},
                }
            },
            "eval": {
                "test": {
                    "dataset": {"name": "digits"},
                    "episodes": {
                        "ways": 3,
                        "shots": 1,
                        "queries": 2,
                        "episodes": 12,
                        "classes": "test",
                        "class_fractions": [0.6, 0.1, 0.3],
                    },
                }
            },
        },
        "model": {"backbone": {"name": "conv4", "channels": 4, "blocks": 2}},
        "method": method,
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"steps": 4, "eval_every": 2, "log_every": 1, "deterministic": True, **train},
    }


@pytest.mark.parametrize("name", META)
def test_every_meta_learner_trains_and_is_scored_on_episodes(tmp_path: Path, name: str) -> None:
    result = ct.run(meta_config(tmp_path, name))
    assert result.summary["status"] == "completed"
    accuracy, ci = result.metrics["test/digit/accuracy"], result.metrics["test/digit/accuracy_ci95"]
    assert 0.0 <= accuracy <= 100.0 and ci > 0
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in lines if r["phase"] == "train")
    assert {"loss/episode0", "loss/episode1"} <= train.keys()
    rescored = ct.evaluate_run(result.run_dir, checkpoint="last")
    assert rescored["test/digit/accuracy"] == pytest.approx(result.summary["final"]["test/digit/accuracy"])


@pytest.mark.parametrize("name", ["maml", "metasgd", "protonet"])
def test_a_resumed_meta_training_is_bitwise_the_uninterrupted_one(tmp_path: Path, name: str) -> None:
    full = ct.run({**meta_config(tmp_path, name, steps=6), "name": "full"})
    ct.run({**meta_config(tmp_path, name, steps=3), "name": "part"})
    resumed = ct.run({**meta_config(tmp_path, name, steps=6), "name": "part"}, resume=True)
    assert resumed.summary["final"] == full.summary["final"]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_protonet_and_the_baseline_separate_planted_classes(tmp_path: Path) -> None:
    train, test = clusters(classes=20, seed=0), clusters(classes=8, seed=1)
    episodes = {"ways": 5, "shots": 1, "queries": 5, "tasks": 4}
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [16]}, [ct.Task("y", num_classes=5)], input_shape=(4,)
    )
    result = ct.fit(
        model,
        method="protonet",
        data=train,
        episodes=episodes,
        eval={"test": test},
        eval_episodes={**episodes, "episodes": 40},
        steps=30,
        optim={"name": "adam", "lr": 0.01},
        output_dir=tmp_path,
        name="proto",
    )
    assert result.metrics["test/y/accuracy"] >= 99.0
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [16]}, [ct.Task("y", num_classes=20)], input_shape=(4,)
    )
    result = ct.fit(
        model,
        method="baseline",
        data=train,
        eval={"test": test},
        eval_episodes={**episodes, "episodes": 40},
        steps=60,
        batch_size=20,
        optim={"name": "adam", "lr": 0.01},
        output_dir=tmp_path,
        name="baseline",
    )
    assert result.metrics["test/y/accuracy"] >= 99.0


def test_a_weighting_balances_the_episodes_of_a_meta_batch(tmp_path: Path) -> None:
    config = meta_config(tmp_path, "fomaml")
    config["weighting"] = {"name": "pcgrad"}
    result = ct.run(config)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in lines if r["phase"] == "train")
    assert {"weight/episode0", "weight/episode1"} <= train.keys()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "erm"}, "read as few-shot episodes, which method 'erm' does not take"),
        ({"tasks": [{"name": "digit", "num_classes": 5}]}, "set num_classes: 3"),
        (
            {"data.train.train.episodes": None},
            "learns from few-shot episodes: give data.train.train an episodes",
        ),
        (
            {"data.train.train.episodes.ways": 12, "tasks": [{"name": "digit", "num_classes": 12}]},
            "12-way episodes need at least 12 classes",
        ),
    ],
)
def test_meta_learning_configs_are_checked_before_training(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    config = meta_config(tmp_path, "maml")
    for key, value in change.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    with pytest.raises((ConfigError, DataError), match=message):
        ct.run(config)


def test_an_evaluation_with_more_ways_than_the_head_is_refused_clearly(tmp_path: Path) -> None:
    config = meta_config(tmp_path, "maml")
    config["data"]["eval"]["test"]["episodes"]["ways"] = 2
    with pytest.raises(ConfigError, match="episodes.ways is 2 but the task has num_classes 3"):
        ct.run(config)


# ----------------------------------------------------------------------------- regression episodes


def test_sinusoid_tasks_follow_finn_et_al() -> None:
    data = ct.load_dataset({"name": "sinusoid", "functions": 50, "points": 8, "seed": 3})
    x, y, f = data.x[:, 0], data.y["y"], data.y["function"]
    assert len(data) == 400 and torch.bincount(f).tolist() == [8] * 50
    assert x.min() >= -5 and x.max() <= 5 and y.abs().max() <= 5
    for k in range(3):  # every function is one sine wave: A sin(x - φ) fits its points exactly
        xs, ys = x[f == k].double(), y[f == k].double()
        basis = torch.stack([torch.sin(xs), torch.cos(xs)], 1)  # A sin(x - φ) = A cos φ sin x - A sin φ cos x
        coef = torch.linalg.lstsq(basis, ys.unsqueeze(1)).solution
        assert (basis @ coef).squeeze(1).sub(ys).abs().max() < 1e-5
        amplitude = coef.norm()
        assert 0.1 <= amplitude <= 5.0


def test_regression_episodes_keep_the_targets_of_one_function() -> None:
    data = ct.load_dataset({"name": "sinusoid", "functions": 20, "points": 15})
    domain = ct.Domain("train", data, episodes=EpisodeConfig(ways=1, shots=5, queries=10, label="function"))
    task = ct.Task("y", kind="regression")
    _, sampler = episode_sampler(domain, [task])
    episodes = sampler.draw(0, 3)
    assert episodes.support_y.shape == (3, 5) and episodes.query_y.shape == (3, 10)
    assert episodes.support_y.is_floating_point()
    function = data.y["function"]
    support, _, query, _ = sampler.indices(1)
    assert len(set(function[torch.cat([support, query])].tolist())) == 1
    torch.testing.assert_close(episodes.support_y[1], data.y["y"][support])
    with pytest.raises(ConfigError, match="set episodes.label"):
        episode_sampler(ct.Domain("train", data, episodes=EpisodeConfig(ways=1)), [task])


def sine_run(tmp_path: Path, method: str | dict[str, Any], steps: int = 3, **options: Any) -> ct.RunResult:
    model = ct.MultiTaskModel(
        {"name": "mlp", "hidden": [40, 40]}, [ct.Task("y", kind="regression")], input_shape=(1,)
    )
    episodes = {"ways": 1, "shots": 5, "queries": 10, "label": "function"}
    name = method if isinstance(method, str) else method["name"]
    return ct.fit(
        model,
        method=method,
        data=ct.load_dataset({"name": "sinusoid", "functions": 500, "points": 15}),
        episodes=None if name == "baseline" else {**episodes, "tasks": 4},
        eval={"test": ct.load_dataset({"name": "sinusoid", "functions": 50, "points": 15, "seed": 1})},
        eval_episodes={**episodes, "episodes": 20},
        optim={"name": "adam", "lr": 0.001},
        steps=steps,
        output_dir=tmp_path,
        name=name,
        **{"log_every": 1, **options},
    )


@pytest.mark.parametrize("name", [n for n in META if n != "protonet"])
def test_every_gradient_meta_learner_regresses_sine_waves(tmp_path: Path, name: str) -> None:
    result = sine_run(tmp_path, name)
    assert result.metrics["test/y/mse"] > 0 and result.metrics["test/y/mse_ci95"] > 0
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("log/query_mse" in r for r in lines if r["phase"] == "train")


def test_prototypes_refuse_regression_and_the_baseline_says_how_to_adapt(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method 'protonet' learns from classification episodes; task 'y'"):
        sine_run(tmp_path, "protonet")
    with pytest.raises(ConfigError, match="episode_adaptation: finetune"):
        sine_run(tmp_path, "baseline", batch_size=50)
    result = sine_run(tmp_path, {"name": "baseline", "episode_adaptation": "finetune"}, batch_size=50)
    assert result.metrics["test/y/mse"] > 0


@pytest.mark.slow
def test_maml_beats_pretraining_then_fine_tuning_on_sine_waves_at_k5(tmp_path: Path) -> None:
    """Finn et al. 2017, Figure 3 (K = 5): after meta-training, MAML's error after a few steps on 5 points is
    far below that of a model pretrained on all the waves and fine-tuned the same way."""
    maml = sine_run(
        tmp_path,
        {"name": "maml", "inner_lr": 0.01, "test_steps": 10, "vectorize": True},
        steps=2000,
        eval_every=2000,
    )
    pretrained = sine_run(
        tmp_path,
        {"name": "baseline", "episode_adaptation": "finetune", "episode_steps": 10, "episode_lr": 0.01},
        steps=2000,
        batch_size=250,
        eval_every=2000,
    )
    assert maml.metrics["test/y/mse"] < 0.6 * pretrained.metrics["test/y/mse"]
