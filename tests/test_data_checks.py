"""Streams over user datasets: bad labels anywhere, inputs-only samples, dict inputs, single-class warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

import crosstask as ct
from crosstask.data.datasets.base import ArrayDataset
from crosstask.data.domains import Domain
from crosstask.data.streams import Batch, LabelReader, Stream, as_input, iterate_batches
from crosstask.data.tasks import Task
from crosstask.errors import DataError

DIGIT = Task("digit", "classification", num_classes=10)


class Labeled(Dataset):
    """A user's dataset without ``targets`` or ``gather``: read sample by sample through a DataLoader."""

    def __init__(self, n: int, bad: dict[int, int] | None = None, keyed: bool = False):
        self.n, self.bad, self.keyed = n, bad or {}, keyed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        y = self.bad.get(i, i % 10)
        return torch.tensor([float(i)]), ({"digit": y} if self.keyed else y)


def drain(stream: Stream, batches: int) -> list[Batch]:
    return [next(stream) for _ in range(batches)]


# ----------------------------------------------------------------------------- class labels out of range


@pytest.mark.parametrize("keyed", [False, True])
def test_a_label_out_of_range_in_a_later_sample_names_the_sample(keyed: bool) -> None:
    stream = Stream(Domain("src", Labeled(40, {37: 12}, keyed=keyed)), [DIGIT], 8, seed=3)
    with pytest.raises(DataError) as info:
        drain(stream, 5)  # one epoch: every sample is read
    message = str(info.value)
    assert "domain 'src'" in message and "task 'digit'" in message
    assert "num_classes 10" in message and "sample 37 has label 12" in message


def test_a_negative_label_below_missing_is_reported() -> None:
    stream = Stream(Domain("src", Labeled(16, {5: -3})), [DIGIT], 4)
    with pytest.raises(DataError, match="sample 5 has label -3"):
        drain(stream, 4)


def test_labels_in_memory_are_checked_up_front_with_the_sample() -> None:
    y = torch.arange(30) % 10
    y[21] = 10
    with pytest.raises(DataError, match=r"labels range over 0..10 \(sample 21 has label 10\)"):
        Stream(Domain("src", ArrayDataset(torch.randn(30, 2), y)), [DIGIT], 4)


def test_tensor_dataset_and_subset_labels_are_checked_per_batch() -> None:
    y = torch.arange(24) % 10
    y[9] = 11
    data = TensorDataset(torch.randn(24, 3), y)
    with pytest.raises(DataError, match="sample 9 has label 11"):
        drain(Stream(Domain("s", data), [DIGIT], 6), 4)
    with pytest.raises(DataError, match="sample 4 has label 11"):  # index 4 of the subset is index 9
        drain(Stream(Domain("s", Subset(data, list(range(5, 24)))), [DIGIT], 6), 3)


def test_valid_labels_stream_as_before_and_resume_exactly() -> None:
    one = Stream(Domain("s", Labeled(30, keyed=True)), [DIGIT], 4, seed=2)
    drain(one, 9)
    state = one.state_dict()
    expected = drain(one, 10)
    two = Stream(Domain("s", Labeled(30, keyed=True)), [DIGIT], 4, seed=2)
    two.load_state_dict(state)
    for a, b in zip(expected, drain(two, 10), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y["digit"], b.y["digit"])


def test_evaluation_reader_checks_batches_too() -> None:
    data = Labeled(20, {13: 10})
    reader = LabelReader(Domain("test", data), [DIGIT], labeled=True)
    with pytest.raises(DataError, match="domain 'test'.*position 3 of a batch"):
        for _, y in iterate_batches(data, 10):
            reader(y)


# ----------------------------------------------------------------------------- samples of varying structure


class Ragged(Dataset):
    """Regression targets of 3 values, except one sample of 2; or one sample lacking a label key."""

    def __init__(self, n: int, odd: int, lacks_key: bool = False):
        self.n, self.odd, self.lacks_key = n, odd, lacks_key

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        y = {"size": torch.zeros(2 if i == self.odd and not self.lacks_key else 3), "digit": i % 10}
        if i == self.odd and self.lacks_key:
            del y["digit"]
        return torch.zeros(4), y


def test_a_target_of_another_shape_is_a_data_error() -> None:
    size = Task("size", "regression", outputs=3)
    stream = Stream(Domain("s", Ragged(24, odd=17)), [size], 6)
    with pytest.raises(
        DataError, match=r"domain 's': sample 17 has label 'size' shape \(2,\) but sample \d+ has \(3,\)"
    ):
        drain(stream, 4)


def test_a_sample_lacking_a_label_key_is_a_data_error() -> None:
    stream = Stream(Domain("s", Ragged(24, odd=11, lacks_key=True)), [DIGIT], 6)
    with pytest.raises(DataError, match=r"sample 11 has label keys \['size'\]"):
        drain(stream, 4)


# ----------------------------------------------------------------------------- inputs without labels


def test_inputs_only_tensor_dataset_is_an_unlabeled_stream() -> None:
    x = torch.randn(20, 3)
    stream = Stream(Domain("target", TensorDataset(x), labeled=False), [DIGIT], 5)
    batches = drain(stream, 6)
    assert all(b.x.shape == (5, 3) and b.y == {} and len(b) == 5 for b in batches)
    pairs = list(iterate_batches(TensorDataset(x), 8))
    assert [len(p[0]) for p in pairs] == [8, 8, 4] and all(p[1] is None for p in pairs)
    assert torch.equal(torch.cat([p[0] for p in pairs]), x)


def test_inputs_only_target_trains_with_dann(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    source = TensorDataset(torch.randn(64, 5, generator=g) + y[:, None].float(), y)
    target = TensorDataset(torch.randn(64, 5, generator=g) + 0.5)
    model = ct.TransferModel("mlp", [ct.Task("label", num_classes=2)], input_shape=(5,))
    result = ct.fit(
        model, method="dann", source=source, target=target, steps=3, batch_size=16, output_dir=tmp_path
    )
    assert result.summary["status"] == "completed"


# ----------------------------------------------------------------------------- dict inputs


def tokens(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    ids = torch.arange(n * 6).reshape(n, 6)
    mask = (torch.arange(6) < (torch.arange(n) % 6 + 1)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask}, torch.arange(n) % 10


class Tokens(Dataset):
    def __init__(self, n: int):
        self.x, self.y = tokens(n)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {k: v[i] for k, v in self.x.items()}, int(self.y[i])


def test_dict_inputs_from_a_plain_dataset_and_an_array_dataset_batch_alike() -> None:
    x, y = tokens(30)
    memory = ArrayDataset(x, y)
    assert len(memory) == 30 and set(memory[3][0]) == {"input_ids", "attention_mask"}
    fast = Stream(Domain("s", memory), [DIGIT], 4, seed=1)
    slow = Stream(Domain("s", Tokens(30)), [DIGIT], 4, seed=1)
    for _ in range(12):
        a, b = next(fast), next(slow)
        assert isinstance(a.x, dict) and set(a.x) == {"input_ids", "attention_mask"} and len(a) == 4
        assert a.x["input_ids"].dtype == torch.long and a.x["input_ids"].shape == (4, 6)
        assert all(torch.equal(a.x[k], b.x[k]) for k in a.x) and torch.equal(a.y["digit"], b.y["digit"])


def test_array_dataset_of_dicts_subsets_and_evaluates() -> None:
    x, y = tokens(10)
    memory = ArrayDataset({**x, "scale": torch.ones(10, dtype=torch.float64)}, y)
    part = memory.subset(torch.tensor([1, 4, 7]))
    assert len(part) == 3 and torch.equal(part.x["input_ids"], x["input_ids"][[1, 4, 7]])
    pairs = list(iterate_batches(memory, 4))
    assert [len(p[1]) for p in pairs] == [4, 4, 2]
    inputs = as_input(pairs[0][0])
    assert inputs["scale"].dtype == torch.get_default_dtype() and inputs["input_ids"].dtype == torch.long
    with pytest.raises(DataError, match="input_ids: 10, attention_mask: 9"):
        ArrayDataset({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:9]}, y)


def test_unlabeled_dict_inputs() -> None:
    x, _ = tokens(12)
    batch = next(Stream(Domain("t", ArrayDataset(x), labeled=False), [DIGIT], 4))
    assert isinstance(batch.x, dict) and batch.y == {} and len(batch) == 4


def test_hugging_face_style_dict_samples_get_a_clear_error() -> None:
    class Records(Tokens):
        def __getitem__(self, i: int):
            return {"input_ids": self.x["input_ids"][i], "label": int(self.y[i])}

    with pytest.raises(DataError, match="x may itself be a dict of input tensors"):
        Stream(Domain("s", Records(8)), [DIGIT], 4)


# ----------------------------------------------------------------------------- single class


def test_single_class_training_labels_warn(caplog: pytest.LogCaptureFixture) -> None:
    y = torch.full((20,), 3)
    y[::5] = -1  # missing labels do not count as a class
    Stream(Domain("source", ArrayDataset(torch.randn(20, 2), y)), [DIGIT], 4)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("domain 'source'" in m and "task 'digit'" in m and "class 3" in m for m in warned)
    caplog.clear()
    Stream(Domain("source", ArrayDataset(torch.randn(20, 2), torch.arange(20) % 2)), [DIGIT], 4)
    assert not [r for r in caplog.records if "every label" in r.getMessage()]


def test_labels_that_are_not_numbers_are_a_data_error() -> None:
    class Named(Labeled):
        def __getitem__(self, i: int):
            return torch.zeros(2), ["cat", "dog"][i % 2]

    with pytest.raises(DataError, match="domain 's': task 'digit' reads labels that are not numbers.*'cat'"):
        Stream(Domain("s", Named(8)), [DIGIT], 4)
