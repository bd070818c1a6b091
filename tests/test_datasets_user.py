"""User data families: ``tabular`` (CSV files) and ``image_folder`` (one subfolder per class)."""

from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from crosstask.data.datasets.base import load_dataset, resolve_data_root
from crosstask.data.datasets.image_folder import ImageFolderDataset
from crosstask.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- tabular helpers


def write_csv(path: Path, lines: list[str], compress: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if compress:
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def people(n: int = 60, seed: int = 0) -> list[str]:
    """A header and ``n`` rows: id, age (numeric), color (categorical), score (regression), y (class)."""
    rng = np.random.default_rng(seed)
    lines = ["id,age,color,score,y"]
    for i in range(n):
        color = ["red", "blue"][i % 2]
        lines.append(f"{i},{20 + rng.integers(0, 40)},{color},{rng.normal():.3f},{['a', 'b', 'c'][i % 3]}")
    return lines


def tabular(tmp_path: Path, **params: Any) -> Any:
    return load_dataset({"name": "tabular", **params}, tmp_path)


# ----------------------------------------------------------------------------- tabular behaviour


def test_tabular_encodes_features_and_labels(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", people())
    train = tabular(
        tmp_path, path=str(path), labels={"y": "y", "score": {"column": "score", "kind": "regression"}}
    )
    assert train.info["feature_names"] == ["id", "age", "color=blue", "color=red"]
    assert train.info["classes"] == {"y": ["a", "b", "c"]}
    assert train.info["label_kinds"] == {"y": "classification", "score": "regression"}
    assert train.x.dtype == torch.float32 and train.x.shape == (48, 4)  # 20% carved as test
    assert train.y["y"].dtype == torch.int64 and set(train.y["y"].tolist()) <= {0, 1, 2}
    assert train.y["score"].dtype == torch.float32
    onehot = train.x[:, 2:]
    assert torch.equal(onehot.sum(1), torch.ones(48))  # exactly one color per row


def test_tabular_fits_on_train_rows_only(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "train.csv",
        ["age,color,y", *[f"{20 + i},{['red', 'blue'][i % 2]},{i % 2}" for i in range(40)]],
    )
    test_path = write_csv(tmp_path / "test.csv", ["age,color,y", "100,green,0", "110,red,1", "120,blue,0"])
    params = {"path": str(path), "test_path": str(test_path), "labels": {"y": "y"}}
    train = tabular(tmp_path, **params)
    test = tabular(tmp_path, **params, split="test")
    assert len(train) == 40 and len(test) == 3
    assert train.info["feature_names"] == ["age", "color=blue", "color=red"]  # no 'green': not in training
    age = train.x[:, 0]
    assert age.mean().abs() < 1e-5 and (age.std(unbiased=False) - 1).abs() < 1e-5
    assert test.x[:, 0].min() > 5  # scaled with the training mean/std, so far from 0
    assert test.x[0, 1:].tolist() == [0.0, 0.0]  # a category unseen in training: all-zero one-hot row
    assert test.x[1, 1:].tolist() == [0.0, 1.0]


def test_tabular_carved_splits_are_fitted_on_train(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", people(200))
    params = {"path": str(path), "labels": {"y": "y"}, "features": ["age", "score"], "val_fraction": 0.25}
    splits = {s: tabular(tmp_path, **params, split=s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [110, 50, 40]
    train_x = splits["train"].x
    assert torch.allclose(train_x.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(train_x.std(0, unbiased=False), torch.ones(2), atol=1e-5)
    assert not torch.allclose(splits["test"].x.mean(0), torch.zeros(2), atol=1e-3)


def test_tabular_splits_are_deterministic_by_seed(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", people(100))

    def ids(split: str, seed: int) -> list[int]:
        params = {"path": str(path), "labels": {"y": "y"}, "normalize": False, "val_fraction": 0.1}
        return tabular(tmp_path, **params, split=split, split_seed=seed).x[:, 0].int().tolist()

    assert ids("test", 0) == ids("test", 0)
    assert ids("test", 0) != ids("test", 1)
    parts = [ids(s, 3) for s in ("train", "val", "test")]
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(i for part in parts for i in part) == list(range(100))  # a partition: disjoint and complete


def test_tabular_positive_labels_and_missing_values(tmp_path: Path) -> None:
    lines = ["age,job,income,y"]
    lines += [f"{30 + i},{['x', 'y', '?'][i % 3]},{['>50K', '<=50K', '?'][i % 3]},{i % 2}" for i in range(30)]
    lines += ["?,x,>50K,NA"]  # missing age and missing class label
    path = write_csv(tmp_path / "data.csv", lines)
    data = tabular(
        tmp_path,
        path=str(path),
        test_fraction=0.0,
        normalize=True,
        labels={"rich": {"column": "income", "positive": [">50K", ">50K."]}, "y": "y"},
    )
    assert data.info["feature_names"] == ["age", "job=x", "job=y", "job=<missing>"]
    assert data.info["classes"]["rich"] == ["not >50K / >50K.", ">50K / >50K."]
    assert data.y["rich"][:3].tolist() == [1, 0, -1]  # '?' is missing: -1
    assert data.y["y"][-1].item() == -1
    assert data.x[-1, 0].item() == pytest.approx(0.0, abs=1e-6)  # imputed with the training mean
    assert data.x[2, 1:].tolist() == [0.0, 0.0, 1.0]  # missing category is its own one-hot column


def test_tabular_headerless_gzip_with_comments(tmp_path: Path) -> None:
    rows = [f"{25 + i}, Private, Bachelors, {['<=50K', '>50K'][i % 2]}" for i in range(10)]
    path = write_csv(tmp_path / "mini.data.gz", ["|1x3 Cross validator", *rows], compress=True)
    data = tabular(
        tmp_path,
        path=str(path),
        header=False,
        comment="|",
        test_fraction=0.0,
        column_names=["age", "workclass", "education", "income"],
        labels={"income": {"column": "income", "positive": [">50K"]}},
    )
    assert len(data) == 10
    assert data.info["feature_names"] == ["age", "workclass=Private", "education=Bachelors"]
    assert data.y["income"].tolist() == [0, 1] * 5


def test_tabular_relative_path_resolves_against_data_root(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    write_csv(tmp_path / "mine" / "t.csv", people(20))
    assert len(tabular(tmp_path, path="mine/t.csv", labels={"y": "y"}, test_fraction=0.0)) == 20


def test_tabular_explicit_categorical_makes_the_rest_numeric(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "codes.csv", ["zip,age,y", *[f"{1000 + i % 3},{20 + i},{i % 2}" for i in range(12)]]
    )
    data = tabular(tmp_path, path=str(path), labels={"y": "y"}, categorical=["zip"], test_fraction=0.0)
    assert data.info["feature_names"] == ["zip=1000", "zip=1001", "zip=1002", "age"]


# ----------------------------------------------------------------------------- tabular errors


def test_tabular_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.csv.*not found"):
        tabular(tmp_path, path=str(tmp_path / "nothere.csv"), labels={"y": "y"})


def test_tabular_missing_column_suggests_closest(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "people.csv", people(10))
    with pytest.raises(DataError) as info:
        tabular(tmp_path, path=str(path), labels={"y": "y"}, features=["agee", "color"])
    message = str(info.value)
    assert "people.csv" in message and "'agee'" in message and "Did you mean 'age'?" in message
    assert "id, age, color, score, y" in message  # the columns available
    test_path = write_csv(tmp_path / "test.csv", ["id,age,score,y", "1,20,0.5,a"])
    with pytest.raises(DataError, match=r"test\.csv: column 'color' \(used by features\) not found"):
        tabular(tmp_path, path=str(path), test_path=str(test_path), labels={"y": "y"})


def test_tabular_non_numeric_value_in_numeric_column(tmp_path: Path) -> None:
    lines = people(20)
    lines[16] = "15,abc,red,0.1,a"  # line 17 of the file
    path = write_csv(tmp_path / "adult.csv", lines)
    with pytest.raises(DataError) as info:
        tabular(tmp_path, path=str(path), labels={"y": "y"}, numeric=["age"])
    message = str(info.value)
    assert "adult.csv, line 17, column 'age': 'abc' is not a number" in message
    assert "categorical:" in message
    # without numeric:, the column is detected as categorical instead of failing
    assert (
        "age=abc"
        in tabular(tmp_path, path=str(path), labels={"y": "y"}, test_fraction=0.0).info["feature_names"]
    )


def test_tabular_text_in_an_undeclared_numeric_column_warns_with_its_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lines = people(20)
    lines[9] = "8,4O,blue,0.1,c"  # line 10 of the file: a typo in a column of numbers
    path = write_csv(tmp_path / "typo.csv", lines)
    data = tabular(tmp_path, path=str(path), labels={"y": "y"}, test_fraction=0.0)
    assert "age=4O" in data.info["feature_names"]
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("crosstask")]
    assert len(warned) == 1  # the text-only column 'color' is categorical without a warning
    message = warned[0].getMessage()
    assert "column 'age'" in message and "'4O'" in message and "typo.csv, line 10" in message
    assert "treated as categorical" in message and "1 of 20 values" in message


def test_tabular_single_class_in_training_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = ["x,y", *[f"{i},yes" for i in range(20)]]
    path = write_csv(tmp_path / "one.csv", lines)
    tabular(tmp_path, path=str(path), labels={"y": "y"})
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("one.csv" in m and "labels.y" in m and "'yes'" in m and "column 'y'" in m for m in warned)


def test_tabular_wrong_number_of_fields(tmp_path: Path) -> None:
    lines = people(10)
    lines[5] = "4,30,red,a"
    path = write_csv(tmp_path / "short.csv", lines)
    with pytest.raises(DataError, match=r"short\.csv, line 6: expected 5 fields .* found 4"):
        tabular(tmp_path, path=str(path), labels={"y": "y"})


def test_tabular_empty_and_header_only_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty\.csv.*empty"):
        tabular(tmp_path, path=str(empty), labels={"y": "y"})
    header_only = write_csv(tmp_path / "header.csv", ["a,y"])
    with pytest.raises(DataError, match=r"header\.csv.*no data rows"):
        tabular(tmp_path, path=str(header_only), labels={"y": "y"})


def test_tabular_label_unseen_in_training(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "train.csv", ["x,y", *[f"{i},{'ab'[i % 2]}" for i in range(10)]])
    test_path = write_csv(tmp_path / "test.csv", ["x,y", "1,a", "2,b", "3,zz"])
    with pytest.raises(DataError) as info:
        tabular(tmp_path, path=str(path), test_path=str(test_path), labels={"y": "y"})
    message = str(info.value)
    assert "test.csv, line 4, column 'y'" in message and "'zz'" in message and "training" in message


def test_tabular_regression_label_must_be_numeric(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", ["x,t", "1,0.5", "2,?", "3,high"])
    with pytest.raises(DataError, match=r"r\.csv, line 4, column 't': 'high' is not a number"):
        tabular(tmp_path, path=str(path), labels={"t": {"column": "t", "kind": "regression"}})
    good = write_csv(tmp_path / "r2.csv", ["x,t", "1,0.5", "2,?", "3,2"])
    data = tabular(
        tmp_path, path=str(good), labels={"t": {"column": "t", "kind": "regression"}}, test_fraction=0.0
    )
    assert data.y["t"][0].item() == 0.5 and torch.isnan(data.y["t"][1])


def test_tabular_positive_never_seen(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "p.csv", ["x,income", "1,<=50K", "2,>50K"])
    with pytest.raises(DataError, match=r"p\.csv: column 'income'.*'>50k'.*fix positive"):
        tabular(tmp_path, path=str(path), labels={"rich": {"column": "income", "positive": [">50k"]}})


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"delimiter": ", "}, "exactly one character"),
        ({"labels": {"y": {"column": "y", "positive": ["a"], "kind": "regression"}}}, "positive"),
        ({"features": ["y"]}, "label column cannot be a feature"),
        ({"header": False}, "column_names"),
        ({"categorical": ["a"], "numeric": ["a"]}, "both categorical: and numeric:"),
        ({"label": {"y": "y"}}, "Did you mean 'labels'?"),
    ],
)
def test_tabular_config_errors(tmp_path: Path, params: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        tabular(tmp_path, **{"path": "x.csv", "labels": {"y": "y"}, **params})


# ----------------------------------------------------------------------------- the real UCI Adult file

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
    "income",
]


@pytest.mark.data
def test_tabular_loads_uci_adult() -> None:
    root = resolve_data_root()
    if not (root / "adult" / "adult.data.gz").is_file():
        pytest.skip(f"UCI Adult not found at {root / 'adult' / 'adult.data.gz'} (set $CROSSTASK_DATA)")
    data = load_dataset(
        {
            "name": "tabular",
            "path": str(root / "adult" / "adult.data.gz"),
            "header": False,
            "column_names": ADULT_COLUMNS,
            "comment": "|",
            "test_fraction": 0.0,
            "labels": {
                "income": {"column": "income", "positive": [">50K", ">50K."]},
                "never_married": {"column": "marital-status", "positive": ["Never-married"]},
            },
        },
        root,
    )
    assert len(data) == 32561
    assert data.y["income"].float().mean().item() == pytest.approx(0.241, abs=0.001)
    assert data.y["never_married"].float().mean().item() == pytest.approx(0.328, abs=0.001)
    assert (
        "workclass=Private" in data.info["feature_names"]
        and "workclass=<missing>" in data.info["feature_names"]
    )
    assert torch.isfinite(data.x).all()


# ----------------------------------------------------------------------------- image_folder


def make_images(folder: Path) -> Path:
    """Two classes: 'cat' (3 red-ish RGB/RGBA/palette images) and 'dog' (4 blue grayscale-or-RGB images)."""
    (folder / "cat").mkdir(parents=True)
    (folder / "dog" / "nested").mkdir(parents=True)
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "cat" / "a.png")
    Image.new("RGBA", (20, 50), (255, 0, 0, 128)).save(folder / "cat" / "b.PNG")
    Image.new("RGB", (33, 33), (255, 0, 0)).convert("P").save(folder / "cat" / "c.gif")
    for i in range(3):
        Image.new("RGB", (16 + i, 24), (0, 0, 255)).save(folder / "dog" / f"{i}.bmp")
    Image.new("L", (30, 30), 200).save(folder / "dog" / "nested" / "d.jpg")
    (folder / "dog" / "notes.txt").write_text("not an image, and not an image suffix")
    (folder / "dog" / ".hidden.png").write_bytes(b"hidden files are skipped")
    return folder


def images(root: Path, **params: Any) -> Any:
    return load_dataset({"name": "image_folder", "test_fraction": 0.0, **params}, root)


def test_image_folder_shapes_and_labels(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "pets")
    data = images(tmp_path, path=str(folder), size=16, normalize="none")
    assert len(data) == 7
    base = data.dataset
    assert isinstance(base, ImageFolderDataset)
    assert base.classes == ["cat", "dog"]
    assert base.targets.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert [Path(p).name for p, _ in base.samples] == [
        "a.png",
        "b.PNG",
        "c.gif",
        "0.bmp",
        "1.bmp",
        "2.bmp",
        "d.jpg",
    ]
    for i in range(len(data)):
        x, label = data[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(label, int)
        assert x.min() >= 0.0 and x.max() <= 1.0
    red, _ = base[0]
    assert torch.allclose(red[0], torch.ones(16, 16)) and torch.allclose(red[2], torch.zeros(16, 16))


def test_image_folder_grayscale_and_normalization(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "pets")
    gray, _ = images(tmp_path, path=str(folder), size=8, grayscale=True)[6]
    assert gray.shape == (1, 8, 8)
    assert torch.allclose(gray, torch.full((1, 8, 8), (200 / 255 - 0.449) / 0.226), atol=1e-3)
    custom, _ = images(tmp_path, path=str(folder), size=8, normalize={"mean": [0.5] * 3, "std": [0.5] * 3})[0]
    assert torch.allclose(custom[0], torch.ones(8, 8)) and torch.allclose(custom[1], -torch.ones(8, 8))
    with pytest.raises(ConfigError, match="channel"):
        images(tmp_path, path=str(folder), grayscale=True, normalize={"mean": [0.5] * 3, "std": [0.5] * 3})


def test_image_folder_per_class_and_splits(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "pets")
    few = images(tmp_path, path=str(folder), size=8, per_class=2)
    assert len(few) == 4
    assert sorted(few[i][1] for i in range(4)) == [0, 0, 1, 1]
    train = load_dataset(
        {"name": "image_folder", "path": str(folder), "size": 8, "test_fraction": 0.3}, tmp_path
    )
    test = load_dataset(
        {"name": "image_folder", "path": str(folder), "size": 8, "test_fraction": 0.3, "split": "test"},
        tmp_path,
    )
    assert len(train) + len(test) == 7 and not set(train.indices) & set(test.indices)


def test_image_folder_is_picklable(tmp_path: Path) -> None:
    data = images(tmp_path, path=str(make_images(tmp_path / "pets")), size=8).dataset
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[3][0], data[3][0]) and copy.classes == data.classes


def test_image_folder_corrupt_image(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "pets")
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    data = images(tmp_path, path=str(folder), size=8)  # lazy: building does not decode
    index = [Path(p).name for p, _ in data.dataset.samples].index("broken.png")
    with pytest.raises(DataError, match=r"broken\.png cannot be read as an image: .*remove or replace it"):
        data.dataset[index]
    with pytest.raises(DataError, match=r"broken\.png cannot be read as an image"):
        images(tmp_path, path=str(folder), size=8, verify=True)


def test_image_folder_truncated_image_found_by_verify(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "pets")
    good = folder / "cat" / "big.png"
    Image.effect_noise((64, 64), 50).save(good)
    (folder / "cat" / "cut.png").write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match=r"cut\.png cannot be read as an image"):
        images(tmp_path, path=str(folder), verify=True)


def test_image_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"'.*nowhere' not found"):
        images(tmp_path, path=str(tmp_path / "nowhere"))
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is a file, not a folder"):
        images(tmp_path, path=str(tmp_path / "file.png"))
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(DataError, match=r"has no class subfolders\. It holds 1 image file"):
        images(tmp_path, path=str(flat))
    folder = make_images(tmp_path / "pets")
    (folder / "empty_class").mkdir()
    (folder / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"empty_class holds no images .*\.txt"):
        images(tmp_path, path=str(folder))


def test_image_folder_episodes_read_images_from_disk(tmp_path: Path) -> None:
    """A dataset not held in memory gives episodes too (samples read one by one)."""
    from crosstask.data.episodes import EpisodeConfig, EpisodeSampler

    folder = make_images(tmp_path / "pets")
    data = images(tmp_path, path=str(folder), size=16, normalize="none")
    sampler = EpisodeSampler(data, EpisodeConfig(ways=2, shots=1, queries=2), "label", "pets")
    episodes = sampler.draw(0, 3)
    assert episodes.support.shape == (3, 2, 3, 16, 16) and episodes.query.shape == (3, 4, 3, 16, 16)
    red = episodes.support[:, :, 0].mean((-1, -2)) > episodes.support[:, :, 2].mean((-1, -2))
    cat = torch.tensor([data.dataset.targets[i] == 0 for i in sampler.indices(0)[0].tolist()])
    assert torch.equal(red[0], cat)  # each support image is the class the episode says


def test_image_folders_with_other_class_folders_are_refused_together(tmp_path: Path) -> None:
    """An evaluation folder without 'cat' would label its dogs 0, the training folder's cats."""
    from crosstask.data.domains import Domain
    from crosstask.data.tasks import Task
    from crosstask.errors import DataError
    from crosstask.experiment.build import check_classes

    train = images(tmp_path, path=str(make_images(tmp_path / "pets")), size=8)
    only_dogs = tmp_path / "dogs"
    (only_dogs / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(only_dogs / "dog" / "a.png")
    test = images(tmp_path, path=str(only_dogs), size=8)
    tasks = [Task("animal", num_classes=2)]
    with pytest.raises(
        DataError, match=r"data\.eval\.dogs: its labels number the classes \[dog\] \(1\).*\[cat, dog\]"
    ):
        check_classes(tasks, {"pets": Domain("pets", train)}, {"dogs": Domain("dogs", test)})
    listed = images(tmp_path, path=str(only_dogs), size=8, classes=["cat", "dog"])  # no cat folder here
    assert listed.dataset.classes == ["cat", "dog"] and listed.dataset.targets.tolist() == [1]
    check_classes(tasks, {"pets": Domain("pets", train)}, {"dogs": Domain("dogs", listed)})
    with pytest.raises(DataError, match="class folder\\(s\\) dog that classes: does not list"):
        images(tmp_path, path=str(only_dogs), size=8, classes=["cat", "bird"])
