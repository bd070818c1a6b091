"""Omniglot's small official pieces: tiny zips laid out like the real ones, then the real data if present."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crosstask.data.datasets.base import load_dataset
from crosstask.data.datasets.omniglot import resize_ink
from crosstask.errors import ConfigError, DataError
from tests.conftest import need

SIDE = 105
RAW = {"mean": 0.0, "std": 1.0, "test_fraction": 0.0}  # pixels as loaded: ink 1, paper 0
# small1: two alphabets; small2 repeats Beta (as the real sets repeat Greek and Latin) and adds Gamma
SMALL1 = {"Alpha": ["character01", "character02"], "Beta": ["character01"]}
SMALL2 = {"Beta": ["character01"], "Gamma": ["character01", "character02", "character03"]}
DRAWERS = 3


def ink_of(seed: int) -> np.ndarray:
    """A 105x105 drawing (True = ink) unique to ``seed``, not symmetric under rotation: a bar whose length
    encodes the seed plus a corner block."""
    ink = np.zeros((SIDE, SIDE), dtype=bool)
    ink[10:14, 5 : 10 + 4 * seed] = True
    ink[60:90, 70:80] = True
    return ink


def png(ink: np.ndarray) -> bytes:
    """A 1-bit PNG with dark strokes on white, like Omniglot's."""
    buffer = io.BytesIO()
    Image.fromarray(~ink).save(buffer, format="PNG")
    return buffer.getvalue()


def seed_of(alphabet: str, character: str, drawer: int) -> int:
    return 3 * (ord(alphabet[0]) - ord("A")) + int(character[-2:]) * 5 + drawer


def write_background(path: Path, top: str, alphabets: dict[str, list[str]]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/", b"")
        for alphabet, characters in alphabets.items():
            for character in characters:
                for drawer in range(DRAWERS):
                    name = f"{top}/{alphabet}/{character}/0{ord(alphabet[0])}_{drawer + 1:02d}.png"
                    archive.writestr(name, png(ink_of(seed_of(alphabet, character, drawer))))


def run_lines(run: int, answers: list[int]) -> str:
    return "".join(
        f"run{run:02d}/test/item{i + 1:02d}.png run{run:02d}/training/class{a + 1:02d}.png\n"
        for i, a in enumerate(answers)
    )


ANSWERS = {1: [2, 0, 1], 2: [1, 1, 0]}  # query i of run r belongs to support class ANSWERS[r][i]


def write_runs(path: Path, lines: dict[int, str] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for run, answers in ANSWERS.items():
            for k in range(3):
                archive.writestr(f"run{run:02d}/training/class{k + 1:02d}.png", png(ink_of(10 * run + k)))
            for i, a in enumerate(answers):
                archive.writestr(f"run{run:02d}/test/item{i + 1:02d}.png", png(ink_of(10 * run + a)))
            text = (lines or {}).get(run, run_lines(run, answers))
            archive.writestr(f"run{run:02d}/class_labels.txt", text)


@pytest.fixture
def omniglot_dir(tmp_path: Path) -> Path:
    write_background(tmp_path / "images_background_small1.zip", "images_background_small1", SMALL1)
    write_background(tmp_path / "images_background_small2.zip", "images_background_small2", SMALL2)
    write_runs(tmp_path / "all_runs.zip")
    return tmp_path


def load(folder: Path, **keys) -> torch.utils.data.Dataset:
    return load_dataset({"name": "omniglot", "path": str(folder), **RAW, **keys})


def test_background_parts_counts_labels_and_names(omniglot_dir: Path) -> None:
    one = load(omniglot_dir)
    assert len(one) == 3 * DRAWERS and one.x.shape == (9, 1, 28, 28)
    assert one.info["classes"]["character"] == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert one.info["classes"]["alphabet"] == ["Alpha", "Beta"]
    assert one.y["character"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert one.y["alphabet"].tolist() == [0] * 6 + [1] * 3
    assert one.y["drawer"].tolist() == [0, 1, 2] * 3
    two = load(omniglot_dir, part="background2")
    assert len(two) == 4 * DRAWERS and two.info["classes"]["alphabet"] == ["Beta", "Gamma"]
    both = load(omniglot_dir, part="background")
    # Beta/character01 is in both sets: kept once, and small2's new classes follow small1's
    assert both.info["classes"]["character"] == [
        "Alpha/character01",
        "Alpha/character02",
        "Beta/character01",
        "Gamma/character01",
        "Gamma/character02",
        "Gamma/character03",
    ]
    assert len(both) == 6 * DRAWERS and torch.bincount(both.y["character"]).tolist() == [DRAWERS] * 6
    assert both.info["classes"]["alphabet"] == ["Alpha", "Beta", "Gamma"]
    assert torch.equal(both.x[: len(one)], one.x)


def test_ink_is_one_and_images_match_their_labels(omniglot_dir: Path) -> None:
    full = load(omniglot_dir, size=SIDE)  # area resize to 105 is the identity: pixels exactly
    names = full.info["classes"]["character"]
    for i in range(len(full)):
        alphabet, character = names[int(full.y["character"][i])].split("/")
        expected = ink_of(seed_of(alphabet, character, int(full.y["drawer"][i])))
        assert torch.equal(full.x[i, 0], torch.from_numpy(expected.astype(np.float32)))
    small = load(omniglot_dir)
    assert small.x[0, 0, 20, 20] > 0.999 and small.x[0, 0, 1, 1] == 0.0  # inside the block; paper
    normalized = load_dataset({"name": "omniglot", "path": str(omniglot_dir), "test_fraction": 0.0})
    assert normalized.x[0, 0, 20, 20] > 0.999 and normalized.x[0, 0, 1, 1] == -1.0  # (x - 0.5) / 0.5


def test_area_resize_keeps_thin_strokes() -> None:
    ink = np.zeros((1, SIDE, SIDE), dtype=np.uint8)
    ink[0, :, 50] = 255  # a one-pixel vertical line
    small = resize_ink(ink, 28)
    assert torch.allclose(small.sum(), torch.tensor(SIDE * 28 / SIDE**2 * 28.0))  # ink mass kept
    assert small[0, :, 13].min() > 0.25  # every row still shows the line


def test_rotations_as_classes(omniglot_dir: Path) -> None:
    plain = load(omniglot_dir)
    rotated = load(omniglot_dir, rotations_as_classes=True)
    n, count = len(plain), len(plain.info["classes"]["character"])
    assert len(rotated) == 4 * n and int(rotated.y["character"].max()) + 1 == 4 * count
    names = rotated.info["classes"]["character"]
    assert names[0] == "Alpha/character01" and names[count] == "Alpha/character01@90"
    assert names[3 * count + 2] == "Beta/character01@270"
    for r in range(4):
        part = slice(r * n, (r + 1) * n)
        assert torch.equal(rotated.y["character"][part], plain.y["character"] + r * count)
        assert torch.equal(rotated.y["alphabet"][part], plain.y["alphabet"])
        assert torch.equal(rotated.y["drawer"][part], plain.y["drawer"])
    # rotation r of an image equals the image rotated (counter-clockwise, as np.rot90) before resizing
    ink = (ink_of(seed_of("Alpha", "character02", 1)) * 255).astype(np.uint8)
    index = 4  # Alpha/character02, drawer 1 (after drawers 0-2 of character01 and drawer 0)
    for r in range(4):
        expected = resize_ink(np.ascontiguousarray(np.rot90(ink, r))[None], 28)[0]
        assert torch.allclose(rotated.x[r * n + index, 0], expected, atol=1e-6)
    with pytest.raises(ConfigError, match="rotations_as_classes"):
        load(omniglot_dir, part="runs", rotations_as_classes=True)


def test_runs_roles_and_query_labels(omniglot_dir: Path) -> None:
    runs = load(omniglot_dir, part="runs", size=SIDE)
    assert len(runs) == 12 and set(runs.y) == {"character", "run", "role"}
    assert runs.y["run"].tolist() == [0] * 6 + [1] * 6
    assert runs.y["role"].tolist() == ([0] * 3 + [1] * 3) * 2
    assert runs.y["character"].tolist() == [0, 1, 2, *ANSWERS[1], 0, 1, 2, *ANSWERS[2]]
    assert runs.info["classes"]["run"] == ["run01", "run02"]
    assert runs.info["classes"]["role"] == ["support", "query"]
    # every query shows the drawing of its support class
    for i in range(len(runs)):
        expected = ink_of(10 * (int(runs.y["run"][i]) + 1) + int(runs.y["character"][i]))
        assert torch.equal(runs.x[i, 0], torch.from_numpy(expected.astype(np.float32)))


def test_generic_subsets_work_on_dict_labels(omniglot_dir: Path) -> None:
    few = load(omniglot_dir, part="background", per_class=2, per_class_label="character")
    assert torch.bincount(few.y["character"]).tolist() == [2] * 6
    spec = {"name": "omniglot", "path": str(omniglot_dir), "part": "background", "test_fraction": 0.25}
    train, test = load_dataset(spec), load_dataset({**spec, "split": "test"})
    assert len(train) + len(test) == 6 * DRAWERS and len(test) == round(6 * DRAWERS * 0.25)


def test_missing_zip_names_folder_file_and_env(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        load(tmp_path, part="background")
    message = str(caught.value)
    assert "images_background_small1.zip" in message and "images_background_small2.zip" in message
    assert str(tmp_path) in message and "CROSSTASK_DATA" in message


def test_corrupt_zip_and_png_name_the_member(tmp_path: Path) -> None:
    (tmp_path / "images_background_small1.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"images_background_small1\.zip.*cannot be opened as a zip"):
        load(tmp_path)
    member = "images_background_small1/Alpha/character01/0065_01.png"
    with zipfile.ZipFile(tmp_path / "images_background_small1.zip", "w") as archive:
        archive.writestr(member, b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError) as caught:
        load(tmp_path)
    message = str(caught.value)
    assert "images_background_small1.zip" in message and member in message and "intact copy" in message


def test_class_labels_naming_a_missing_image(tmp_path: Path) -> None:
    bad = run_lines(2, ANSWERS[2]).replace("item02.png", "item09.png")
    write_runs(tmp_path / "all_runs.zip", lines={2: bad})
    with pytest.raises(DataError, match=r"run02, line 2 of class_labels\.txt.*run02/test/item09\.png"):
        load(tmp_path, part="runs")
    write_runs(tmp_path / "all_runs.zip", lines={1: "run01/test/item01.png\n"})
    with pytest.raises(DataError, match=r"run01, line 1 .*expected"):
        load(tmp_path, part="runs")


# ----------------------------------------------------------------------------- the real data


@pytest.mark.data
@pytest.mark.parametrize(
    ("part", "images", "characters"),
    [("background1", 2720, 136), ("background2", 3120, 156), ("background", 4840, 242)],
)
def test_real_background_parts(data_root: Path, part: str, images: int, characters: int) -> None:
    need(data_root, "omniglot_lake_small")
    ds = load_dataset({"name": "omniglot", "part": part, "test_fraction": 0.0}, root=data_root)
    assert len(ds) == images and ds.x.shape[1:] == (1, 28, 28)
    assert len(ds.info["classes"]["character"]) == characters
    assert torch.bincount(ds.y["character"]).tolist() == [20] * characters
    assert ds.y["drawer"].unique().tolist() == list(range(20))


@pytest.mark.data
def test_real_runs(data_root: Path) -> None:
    need(data_root, "omniglot_lake_small")
    ds = load_dataset({"name": "omniglot", "part": "runs", "test_fraction": 0.0}, root=data_root)
    assert len(ds) == 800 and torch.bincount(ds.y["role"]).tolist() == [400, 400]
    assert ds.y["run"].unique().tolist() == list(range(20))
    for run in range(20):
        support = (ds.y["run"] == run) & (ds.y["role"] == 0)
        assert sorted(ds.y["character"][support].tolist()) == list(range(20))


@pytest.mark.data
def test_alphabets_are_chosen_or_left_out(data_root: Path) -> None:
    """Set 2 without the alphabets set 1 also holds: 106 characters of 3 alphabets, every drawer kept."""
    need(data_root, "omniglot_lake_small")
    spec = {"name": "omniglot", "part": "background2", "exclude_alphabets": ["Greek", "Latin"]}
    data = load_dataset(spec, data_root)
    assert len(data) == 2120 and torch.bincount(data.y["character"]).unique().tolist() == [20]
    assert data.y["alphabet"].unique().tolist() == [0, 1, 2]
    greek = load_dataset({"name": "omniglot", "part": "background1", "alphabets": ["Greek"]}, data_root)
    assert len(greek) == 24 * 20
    with pytest.raises(DataError, match="Klingon not found.*its alphabets: Balinese"):
        load_dataset({"name": "omniglot", "alphabets": ["Klingon"]}, data_root)
