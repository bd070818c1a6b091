"""Datasets, splits, subsets and streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from crosstask.data.datasets.base import ArrayDataset, load_dataset, resolve_data_root
from crosstask.data.domains import Domain
from crosstask.data.streams import MultiStream, Stream
from crosstask.data.tasks import Task
from crosstask.errors import ConfigError, DataError
from tests.conftest import need

DIGIT = Task("digit", "classification", num_classes=10)


# ----------------------------------------------------------------------------- embedded and generated data


def test_digits_labels_and_shapes() -> None:
    ds = load_dataset({"name": "digits", "split": "train"})
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and set(y) == {"digit", "parity", "ge5"}
    assert torch.equal(ds.y["parity"], ds.y["digit"] % 2)
    assert torch.equal(ds.y["ge5"], (ds.y["digit"] >= 5).long())


def test_splits_are_deterministic_disjoint_and_cover_the_pool() -> None:
    spec = {"name": "digits", "val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 3}
    parts = {s: load_dataset({**spec, "split": s}) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == 1797
    keys = {s: {tuple(x.flatten().tolist()) for x in p.x} for s, p in parts.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["val"] & keys["test"]
        and not keys["train"] & keys["val"]
    )
    again = load_dataset({**spec, "split": "test"})
    assert torch.equal(again.x, parts["test"].x)
    other = load_dataset({**spec, "split": "test", "split_seed": 4})
    assert not torch.equal(other.x, parts["test"].x)


def test_shifted_domain_keeps_the_split_of_the_unshifted_one() -> None:
    plain = load_dataset({"name": "digits", "split": "test"})
    shifted = load_dataset({"name": "digits", "split": "test", "rotate": 20, "noise": 0.1})
    assert torch.equal(plain.y["digit"], shifted.y["digit"])
    assert not torch.allclose(plain.x, shifted.x)


def test_per_class_and_limit() -> None:
    few = load_dataset({"name": "digits", "per_class": 3, "per_class_label": "digit"})
    assert torch.equal(torch.bincount(few.y["digit"]), torch.full((10,), 3))
    assert len(load_dataset({"name": "digits", "limit": 17})) == 17
    with pytest.raises(ConfigError, match="per_class_label"):
        load_dataset({"name": "digits", "per_class": 3})


def test_empty_val_split_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset({"name": "digits", "split": "val"})


def test_synthetic_relatedness_is_planted() -> None:
    spec = {
        "name": "synthetic",
        "n": 4000,
        "num_tasks": 4,
        "groups": [[0, 1], [2, 3]],
        "relatedness": 0.95,
        "noise": 0.0,
    }
    y = load_dataset(spec).y
    agree = lambda a, b: float((y[a] == y[b]).float().mean())  # noqa: E731
    assert agree("t0", "t1") > 0.8 and agree("t2", "t3") > 0.8
    assert 0.35 < agree("t0", "t2") < 0.65  # unrelated binary tasks agree by chance


def test_synthetic_domains_shift_the_inputs_not_the_labelling() -> None:
    base = {"name": "synthetic", "n": 3000, "dim": 6}
    source = load_dataset(base)
    target = load_dataset({**base, "domain": 1, "shift": 1.0})
    assert (source.x.mean(0) - target.x.mean(0)).abs().max() > 0.3
    assert not torch.allclose(torch.cov(source.x.T), torch.cov(target.x.T), atol=0.3)
    calm = load_dataset({**base, "domain": 1, "shift": 0.0})
    assert torch.allclose(torch.cov(source.x.T), torch.cov(calm.x.T), atol=0.2)
    with pytest.raises(ConfigError, match="exactly once"):
        load_dataset({**base, "num_tasks": 3, "groups": [[0, 1]]})


# ----------------------------------------------------------------------------- files under the data root


def test_missing_files_say_where_they_were_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset({"name": "mnist"}, root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "mnist") in message and "train-images-idx3-ubyte.gz" in message
    assert "CROSSTASK_DATA" in message


def test_data_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CROSSTASK_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root("/explicit") == Path("/explicit")


@pytest.mark.data
def test_mnist_reader(data_root: Path) -> None:
    need(data_root, "mnist")
    test = load_dataset({"name": "mnist", "split": "test"}, data_root)
    assert len(test) == 10000 and test.x.shape[1:] == (1, 28, 28)
    assert torch.bincount(test.y).tolist()[:3] == [980, 1135, 1032]
    assert float(test.x.min()) >= -1.0 and float(test.x.max()) <= 1.0


@pytest.mark.data
def test_usps_reader(data_root: Path) -> None:
    need(data_root, "usps")
    train = load_dataset({"name": "usps", "split": "train"}, data_root)
    test = load_dataset({"name": "usps", "split": "test", "size": 16}, data_root)
    assert len(train) == 7291 and train.x.shape[1:] == (1, 28, 28)
    assert len(test) == 2007 and test.x.shape[1:] == (1, 16, 16)
    assert torch.bincount(test.y).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


@pytest.mark.data
def test_image_shifts_make_a_second_domain_of_usps(data_root: Path) -> None:
    """rotate 180 equals flipping both axes; invert maps a normalized pixel x to -x; the noise differs between
    splits and is fixed by shift_seed."""
    need(data_root, "usps")
    plain = load_dataset({"name": "usps", "split": "test", "size": 16}, data_root)
    rotated = load_dataset({"name": "usps", "split": "test", "size": 16, "rotate": 180}, data_root)
    inverted = load_dataset({"name": "usps", "split": "test", "size": 16, "invert": True}, data_root)
    torch.testing.assert_close(rotated.x, plain.x.flip(-1, -2), atol=1e-5, rtol=0)
    torch.testing.assert_close(inverted.x, -plain.x)
    assert torch.equal(rotated.y, plain.y)
    noisy = {"name": "usps", "size": 16, "noise": 0.1, "limit": 50}
    train, test = (load_dataset({**noisy, "split": s}, data_root) for s in ("train", "test"))
    again = load_dataset({**noisy, "split": "test"}, data_root)
    first = load_dataset({"name": "usps", "size": 16, "limit": 50, "split": "train"}, data_root)
    second = load_dataset({"name": "usps", "size": 16, "limit": 50, "split": "test"}, data_root)
    assert torch.equal(test.x, again.x)
    assert not torch.allclose(train.x - first.x, test.x - second.x)


@pytest.mark.data
def test_mnist1d_reader(data_root: Path) -> None:
    need(data_root, "mnist1d")
    train = load_dataset({"name": "mnist1d"}, data_root)
    assert len(train) == 4000 and train.x.shape[1:] == (40,)
    assert load_dataset({"name": "mnist1d", "split": "test", "channels": True}, data_root).x.shape[1:] == (
        1,
        40,
    )


def test_corrupt_idx_file_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (folder / name).write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset({"name": "mnist"}, root=tmp_path)


# ----------------------------------------------------------------------------- streams


def array(n: int, labels: dict | None = None) -> ArrayDataset:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    return ArrayDataset(x, labels if labels is not None else torch.arange(n) % 10)


def test_stream_is_infinite_and_reshuffles_each_epoch() -> None:
    stream = Stream(Domain("s", array(10)), [DIGIT], 4, seed=0)
    epoch_batches = [next(stream).x.flatten().tolist() for _ in range(2)]
    seen = sorted(v for b in epoch_batches for v in b)
    assert len(set(seen)) == 8  # drop_last: 2 batches of 4 per epoch of 10
    later = [next(stream).x.flatten().tolist() for _ in range(10)]
    assert all(len(b) == 4 for b in later)
    assert later[0] + later[1] != epoch_batches[0] + epoch_batches[1]


def test_streams_of_different_lengths_cycle_independently() -> None:
    multi = MultiStream(
        {"a": Stream(Domain("a", array(8)), [DIGIT], 4), "b": Stream(Domain("b", array(100)), [DIGIT], 4)}
    )
    for _ in range(7):
        batch = next(multi)
    assert set(batch) == {"a", "b"}
    assert multi.state_dict() == {"a": {"consumed": 7}, "b": {"consumed": 7}}


def test_stream_resumes_exactly_from_its_state() -> None:
    one = Stream(Domain("s", array(50)), [DIGIT], 8, seed=5)
    for _ in range(9):
        next(one)
    state = one.state_dict()
    expected = [next(one).x for _ in range(10)]
    two = Stream(Domain("s", array(50)), [DIGIT], 8, seed=5)
    two.load_state_dict(state)
    assert all(torch.equal(a, next(two).x) for a in expected)


class PlainDataset(Dataset):
    """A user's dataset without gather(): served through a DataLoader."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]), {"digit": i % 10, "other": 0}


def test_plain_datasets_follow_the_same_order_as_in_memory_ones() -> None:
    fast = Stream(Domain("s", array(30)), [DIGIT], 4, seed=1)
    slow = Stream(Domain("s", PlainDataset(30)), [DIGIT], 4, seed=1)
    for _ in range(12):
        a, b = next(fast), next(slow)
        assert torch.equal(a.x, b.x) and torch.equal(a.y["digit"], b.y["digit"])


def test_tensor_dataset_works_unwrapped() -> None:
    ds = TensorDataset(torch.randn(20, 3), torch.randint(0, 10, (20,)))
    batch = next(Stream(Domain("s", ds), [DIGIT], 5))
    assert batch.x.shape == (5, 3) and batch.y["digit"].shape == (5,)


def test_label_mismatches_are_clear() -> None:
    parity = Task("parity", num_classes=2)
    with pytest.raises(DataError, match="gives one label per sample but the domain has tasks digit, parity"):
        Stream(Domain("s", array(10)), [DIGIT, parity], 2)
    with pytest.raises(DataError, match="task 'digit' reads label 'digit'.*gives labels a"):
        Stream(Domain("s", array(10, {"a": torch.zeros(10)})), [DIGIT], 2)
    inputs_only = TensorDataset(torch.randn(10, 2))
    with pytest.raises(DataError, match="labeled: false"):
        Stream(Domain("s", _InputsOnly(inputs_only)), [DIGIT], 2)
    unlabeled = next(Stream(Domain("s", _InputsOnly(inputs_only), labeled=False), [DIGIT], 2))
    assert unlabeled.y == {}


class _InputsOnly(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i][0]


def test_task_label_key_maps_dataset_labels() -> None:
    task = Task("is_odd", num_classes=2, label="parity")
    ds = load_dataset({"name": "digits", "limit": 40})
    batch = next(Stream(Domain("s", ds), [task], 8))
    assert set(batch.y) == {"is_odd"}
    assert np.isin(batch.y["is_odd"].numpy(), [0, 1]).all()


@pytest.mark.data
def test_multimnist_follows_the_sener_koltun_construction(data_root: Path) -> None:
    need(data_root, "mnist")
    from crosstask.data.datasets.mnist import read_idx

    test = load_dataset({"name": "multimnist", "split": "test"}, data_root)
    assert len(test) == 10000 and test.x.shape[1:] == (1, 28, 28) and set(test.y) == {"left", "right"}
    labels = torch.from_numpy(read_idx(data_root / "mnist" / "t10k-labels-idx1-ubyte.gz").astype("int64"))
    assert torch.equal(test.y["left"], labels)  # the left digit is the MNIST image itself
    again = load_dataset({"name": "multimnist", "split": "test"}, data_root)
    assert torch.equal(again.y["right"], test.y["right"])
    other = load_dataset({"name": "multimnist", "split": "test", "pair_seed": 1}, data_root)
    assert not torch.equal(other.y["right"], test.y["right"])


def test_overlay_puts_the_digits_top_left_and_bottom_right() -> None:
    from crosstask.data.datasets.multimnist import overlay

    left = torch.zeros(1, 28, 28, dtype=torch.uint8).numpy()
    right = left.copy()
    left[0, 0:4, 0:4] = 255  # a blob in the top-left corner of the left digit
    right[0, 24:28, 24:28] = 255  # a blob in the bottom-right corner of the right digit
    image = overlay(left, right)[0, 0]
    assert image[:4, :4].max() == 1 and image[-5:, -5:].max() == 1
    assert image[-5:, :5].sum() == 0 and image[:5, -5:].sum() == 0
