"""Random affine warps of training streams (``augment:``): geometry, determinism, resume, and clear refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import crosstask as ct
from crosstask.config import validate_config
from crosstask.data.episodes import EpisodeConfig, EpisodeStream, episode_sampler
from crosstask.data.streams import Stream
from crosstask.errors import ConfigError, DataError
from crosstask.modules.augment import WarpConfig, warp_images


def images(n: int = 40, classes: int = 4, side: int = 12, seed: int = 0) -> ct.ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    return ct.ArrayDataset(torch.rand(n, 1, side, side, generator=g), torch.arange(n) % classes)


def test_without_any_part_a_warp_is_the_identity() -> None:
    x = torch.rand(5, 3, 16, 16)
    out = warp_images(x, WarpConfig(probability=0.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def blob(n: int, side: int = 29, row: int = 14, col: int = 22) -> torch.Tensor:
    """``n`` images holding one bright 3x3 blob centred at (row, col) on a zero background."""
    x = torch.zeros(n, 1, side, side)
    x[:, :, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    return x


def centroids(x: torch.Tensor) -> torch.Tensor:
    """The (row, col) centre of mass of each image, relative to the image centre."""
    side = x.shape[-1]
    grid = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    mass = x.sum(dim=(1, 2, 3))
    rows = (x.sum(dim=(1, 3)) * grid).sum(1) / mass
    cols = (x.sum(dim=(1, 2)) * grid).sum(1) / mass
    return torch.stack([rows, cols], 1)


def test_a_rotation_moves_a_point_along_its_circle_and_a_shift_moves_it_by_at_most_the_shift() -> None:
    x = blob(64)
    before = centroids(x)  # (0, 8): 8 pixels right of the centre
    g = torch.Generator().manual_seed(0)
    rotated = warp_images(x, WarpConfig(rotate=30, shear=0, scale=0, translate=0, probability=1), g)
    radius = centroids(rotated).norm(dim=1)
    torch.testing.assert_close(radius, before.norm(dim=1), atol=0.3, rtol=0)
    angles = torch.rad2deg(torch.atan2(centroids(rotated)[:, 0], centroids(rotated)[:, 1])).abs()
    assert angles.max() <= 30.5 and angles.max() > 15  # within the range, and not all tiny
    shifted = warp_images(x, WarpConfig(rotate=0, shear=0, scale=0, translate=0.1, probability=1), g)
    moved = (centroids(shifted) - before).abs()
    assert moved.max() <= 0.1 * 29 + 0.3 and moved.max() > 1.0


def test_warps_keep_the_ink_when_the_border_is_background() -> None:
    """A centred square on a zero background keeps about its area under small warps."""
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    out = warp_images(x, WarpConfig(), torch.Generator().manual_seed(0))
    area = out.sum(dim=(1, 2, 3))
    assert not torch.equal(out, x)
    # scale within [0.8, 1.2] per axis and a shear of at most 0.3 keep the area within these factors
    assert ((area > 64 * 0.8**2 * 0.85) & (area < 64 * 1.2**2 * 1.15)).all()


def test_a_stream_warps_deterministically_and_resumes_with_the_same_warps() -> None:
    data = images()
    warped = ct.Domain("source", data, augment=WarpConfig(probability=1.0))
    plain = ct.Domain("source", data)
    tasks = [ct.Task("y", num_classes=4)]
    a, b, c = (Stream(d, tasks, 8, seed=3) for d in (warped, warped, plain))
    first = [next(a).x for _ in range(3)]
    assert all(torch.equal(x, next(b).x) for x in first)
    assert not torch.equal(first[0], next(c).x)  # the warps change the images
    resumed = Stream(warped, tasks, 8, seed=3)
    resumed.load_state_dict({"consumed": 2})
    assert torch.equal(next(resumed).x, first[2])
    other_seed = Stream(warped, tasks, 8, seed=4)
    assert not torch.equal(next(other_seed).x, first[0])


def test_episodes_warp_support_and_query_and_resume_alike() -> None:
    domain = ct.Domain(
        "background",
        images(n=60, classes=6),
        episodes=EpisodeConfig(ways=3, shots=1, queries=2, tasks=2),
        augment=WarpConfig(),
    )
    tasks = [ct.Task("y", num_classes=3)]
    sampler = episode_sampler(domain, tasks, seed=0)[1]
    stream = EpisodeStream(sampler, augment=domain.augment)
    plain = EpisodeStream(sampler)
    batches = [next(stream) for _ in range(2)]
    reference = next(plain)
    assert batches[0].support.shape == reference.support.shape == (2, 3, 1, 12, 12)
    assert batches[0].query.shape == reference.query.shape
    assert torch.equal(batches[0].support_y, reference.support_y)  # labels untouched
    assert not torch.equal(batches[0].support, reference.support)
    resumed = EpisodeStream(sampler, augment=domain.augment)
    resumed.load_state_dict({"consumed": 1})
    again = next(resumed)
    assert torch.equal(again.support, batches[1].support) and torch.equal(again.query, batches[1].query)


@pytest.mark.parametrize("x", [torch.rand(10, 5), torch.randint(0, 9, (10, 1, 4, 4))])
def test_a_warp_of_inputs_that_are_not_images_is_refused_clearly(x: torch.Tensor) -> None:
    domain = ct.Domain("tabular", ct.ArrayDataset(x, torch.arange(10) % 2), augment=WarpConfig())
    stream = Stream(domain, [ct.Task("y", num_classes=2)], 4)
    with pytest.raises(DataError, match="domain 'tabular': augment warps images.*remove augment"):
        next(stream)


def test_a_warp_of_dict_inputs_is_refused_clearly() -> None:
    class Tokens(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int):
            return {"input_ids": torch.arange(4), "attention_mask": torch.ones(4)}, i % 2

    stream = Stream(ct.Domain("text", Tokens(), augment=WarpConfig()), [ct.Task("y", num_classes=2)], 4)
    with pytest.raises(DataError, match="inputs are a dict.*remove augment"):
        next(stream)


def test_configs_accept_augment_on_training_streams_only() -> None:
    base = {
        "tasks": [{"name": "digit", "num_classes": 10}],
        "data": {"train": {"source": {"dataset": {"name": "digits"}, "augment": {"rotate": 5}}}},
        "model": {"backbone": {"name": "lenet"}},
    }
    config = validate_config(base)
    assert config.data.train["source"].augment == WarpConfig(rotate=5)
    with pytest.raises(ConfigError, match="evaluation set\\(s\\) test set augment"):
        validate_config(
            {
                **base,
                "data": {**base["data"], "eval": {"test": {"dataset": {"name": "digits"}, "augment": {}}}},
            }
        )
    with pytest.raises(ConfigError, match="rotate"):
        validate_config(
            {
                **base,
                "data": {"train": {"source": {"dataset": {"name": "digits"}, "augment": {"rotate": -1}}}},
            }
        )


def test_a_run_with_warped_images_trains_and_evaluates_on_plain_images(tmp_path: Path) -> None:
    data = images(n=64, classes=4, side=28)
    tasks = [ct.Task("y", num_classes=4)]
    model = ct.MultiTaskModel({"name": "lenet"}, tasks, input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="evaluation set 'held_out' sets augment"):
        ct.fit(model, data=data, eval={"held_out": ct.Domain("x", data, augment=WarpConfig())}, steps=1)
    result = ct.fit(
        model,
        source=ct.Domain("source", data, augment=WarpConfig(rotate=15)),
        eval={"held_out": images(n=32, classes=4, side=28, seed=1)},
        steps=6,
        batch_size=16,
        output_dir=tmp_path,
        seed=0,
    )
    assert math.isfinite(result.metrics["held_out/y/accuracy"])
    saved = (result.run_dir / "config.yaml").read_text()
    assert "augment:" in saved and "rotate: 15.0" in saved  # the run's record says how it trained


def test_a_warped_domain_held_out_by_lodo_is_evaluated_as_it_is() -> None:
    from crosstask.lodo import held_out_config

    domains = {
        f"d{i}": {"dataset": {"name": "digits", "rotate": 30 * i}, "augment": {"rotate": 5}} for i in range(3)
    }
    experiment = validate_config(
        {
            "tasks": [{"name": "digit", "num_classes": 10}],
            "data": {"train": domains},
            "model": {"backbone": {"name": "lenet"}},
        }
    )
    held = validate_config(held_out_config(experiment, "d1"))
    assert held.data.eval["heldout"].augment is None
    assert held.data.train["d0"].augment == WarpConfig(rotate=5)


def test_a_domain_given_warps_as_a_mapping_is_validated(tmp_path: Path) -> None:
    data = images(n=32, classes=4, side=28)
    model = ct.MultiTaskModel({"name": "lenet"}, [ct.Task("y", num_classes=4)], input_shape=(1, 28, 28))
    with pytest.raises(ConfigError, match="rotate"):
        ct.fit(model, data=ct.Domain("train", data, augment={"rotate": -3}), steps=1, output_dir=tmp_path)
    result = ct.fit(model, data=ct.Domain("train", data, augment={"rotate": 3}), steps=2, output_dir=tmp_path)
    assert result.summary["status"] == "completed"
