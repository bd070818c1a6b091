"""Property tests (hypothesis) for the pieces whose correctness is pure math: splits, streams, masked
losses, the static weighting and config overrides."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crosstask.config import apply_overrides
from crosstask.data.datasets.base import ArrayDataset, split_indices
from crosstask.data.domains import Domain
from crosstask.data.streams import Stream
from crosstask.data.tasks import Task
from crosstask.evaluation.losses import cross_entropy, mean_squared_error
from crosstask.registry import WEIGHTINGS
from crosstask.weighting.base import BalanceContext
from tests.balancing import balance

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(n=st.integers(0, 400), val=st.floats(0, 0.45), test=st.floats(0, 0.45), seed=st.integers(0, 2**31))
def test_splits_partition_the_pool(n: int, val: float, test: float, seed: int) -> None:
    parts = split_indices(n, val, test, seed)
    everything = torch.cat(list(parts.values())).sort().values
    assert torch.equal(everything, torch.arange(n))
    assert len(parts["test"]) == round(n * test) and len(parts["val"]) == round(n * val)
    again = split_indices(n, val, test, seed)
    assert all(torch.equal(parts[k], again[k]) for k in parts)


@FAST
@given(n=st.integers(1, 60), batch=st.integers(1, 16), seed=st.integers(0, 1000))
def test_a_stream_epoch_visits_distinct_samples(n: int, batch: int, seed: int) -> None:
    dataset = ArrayDataset(
        torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.zeros(n, dtype=torch.long)
    )
    stream = Stream(Domain("s", dataset), [Task("t", num_classes=2)], batch, seed=seed)
    per_epoch = n // stream.batch_size
    seen = torch.cat([next(stream).x.flatten() for _ in range(per_epoch)])
    assert len(seen) == per_epoch * stream.batch_size == len(set(seen.tolist()))


@FAST
@given(n=st.integers(1, 30), classes=st.integers(2, 6), data=st.data())
def test_masked_cross_entropy_is_the_mean_over_present_labels(
    n: int, classes: int, data: st.DataObject
) -> None:
    labels = torch.tensor(data.draw(st.lists(st.integers(-1, classes - 1), min_size=n, max_size=n)))
    logits = torch.randn(n, classes)
    present = labels >= 0
    expected = F.cross_entropy(logits[present], labels[present]) if present.any() else torch.tensor(0.0)
    assert torch.allclose(cross_entropy(logits, labels), expected, atol=1e-6)


@FAST
@given(mask=st.lists(st.booleans(), min_size=1, max_size=20))
def test_masked_mse_ignores_nan_targets(mask: list[bool]) -> None:
    keep = torch.tensor(mask)
    out, target = torch.randn(len(mask)), torch.randn(len(mask))
    target[~keep] = float("nan")
    expected = ((out - target)[keep] ** 2).mean() if keep.any() else torch.tensor(0.0)
    assert torch.allclose(mean_squared_error(out, target), expected, atol=1e-6)


@FAST
@given(weights=st.lists(st.floats(0, 10), min_size=1, max_size=5))
def test_static_weighting_reproduces_the_weighted_sum(weights: list[float]) -> None:
    names = [f"l{i}" for i in range(len(weights))]
    entry = WEIGHTINGS.get("static")
    weighting = entry.obj(entry.config(name="static", weights=dict(zip(names, weights, strict=True))), names)
    p = torch.randn(4, requires_grad=True)
    losses = {n: (p * (i + 1)).pow(2).sum() for i, n in enumerate(names)}
    balance(weighting, losses, BalanceContext(0, [p]))
    expected = torch.autograd.grad(sum(w * (p * (i + 1)).pow(2).sum() for i, w in enumerate(weights)), p)[0]
    assert torch.allclose(p.grad, expected, rtol=1e-5, atol=1e-5)


keys = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=4)


@FAST
@given(path=keys, value=st.one_of(st.integers(), st.booleans(), st.text("xyz", min_size=1, max_size=5)))
def test_an_override_sets_exactly_its_key(path: list[str], value: object) -> None:
    out = apply_overrides({"untouched": 1}, [f"{'.'.join(path)}={value}"])
    node = out
    for part in path:
        node = node[part]
    assert (node == value and out["untouched"] == 1) or path[0] == "untouched"
