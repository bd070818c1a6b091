"""Text end to end on a tiny BERT and generated reviews: every method, every multi-task architecture, and the
CLI (run, evaluate, resume) on a ``text`` dataset read from CSV files."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import crosstask as ct
from crosstask.data.tokenize import load_tokenizer, tokenize
from crosstask.errors import DataError
from crosstask.methods.adaptation import Adaptation
from crosstask.methods.coral import CORAL
from crosstask.methods.generalization import Generalization
from crosstask.registry import ARCHITECTURES, METHODS
from tests.conftest import run_cli
from tests.test_text_backbone import counting
from tests.text_helpers import save_tiny_bert, save_tokenizer

POSITIVE, NEGATIVE = ["good", "great"], ["bad", "awful"]


def reviews(n: int, domain: int, seed: int, longest: int = 8) -> list[tuple[str, int, float]]:
    """``n`` (text, sentiment, rating) rows: a sentiment word among 3 to ``longest`` filler words of the
    domain's own vocabulary."""
    rng = random.Random(seed)
    filler = [f"w{i}" for i in range(150 * domain, 150 * domain + 150)]
    rows = []
    for i in range(n):
        positive = i % 2
        words = [*rng.sample(filler, rng.randint(3, longest)), rng.choice(POSITIVE if positive else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), positive, 4.0 + positive if positive else 1.0 + rng.random()))
    return rows


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("text_model")
    return {
        "tokenizer": str(save_tokenizer(folder / "tokenizer" / "tokenizer.json")),
        "model": str(save_tiny_bert(folder / "bert")),
    }


def tokenized(
    text_model: dict[str, str], n: int, domain: int, seed: int, labeled: bool = True
) -> ct.ArrayDataset:
    rows = reviews(n, domain, seed)
    x = tokenize([r[0] for r in rows], load_tokenizer(text_model["tokenizer"]), max_length=16)
    y = {"sentiment": torch.tensor([r[1] for r in rows])}
    return ct.ArrayDataset(x, y if labeled else None)


# what a method needs beyond its defaults here
OPTIONS: dict[str, dict[str, Any]] = {"dann": {"hidden": 8}, "cdan": {"hidden": 8}, "bsp": {"hidden": 8}}


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_trains_a_text_encoder(tmp_path: Path, text_model: dict[str, str], name: str) -> None:
    torch.manual_seed(0)
    tasks = [ct.Task("sentiment", num_classes=2)]
    # a bottleneck (Linear-BN-ReLU) as text adaptation configs use: AdaBN and TENT need its batch norm
    model = ct.MultiTaskModel({"name": "transformer", "model": text_model["model"]}, tasks, bottleneck=8)
    entry = METHODS.get(name).obj
    streams: dict[str, Any] = {}
    options: dict[str, Any] = {}
    if issubclass(entry, Adaptation) or entry is CORAL:
        if getattr(entry, "needs_source", True):
            options["source"] = tokenized(text_model, 32, 0, 1)
        options["target"] = tokenized(text_model, 32, 1, 2, labeled=False)
    elif issubclass(entry, Generalization):
        streams = {f"d{i}": tokenized(text_model, 32, i, i) for i in range(3)}
    else:
        options["data"] = tokenized(text_model, 32, 0, 1)
    if entry.reads_episodes:
        options["episodes"] = {"ways": 2, "shots": 2, "queries": 3, "tasks": 2}
    method = {"name": name, **OPTIONS.get(name, {})}
    if name == "mixstyle":  # statistics of a feature map or vector layer: the transformer's embeddings
        method.update(layers=["embeddings"], vectors=True)

    def run() -> Any:
        return ct.fit(
            model,
            method=method,
            streams=streams or None,
            eval={"test": tokenized(text_model, 16, 1, 9)},
            steps=2,
            batch_size=8,
            output_dir=tmp_path,
            **options,
        )

    if name == "fixmatch":  # it augments images or vectors; token ids get one clear message
        with pytest.raises(ct.ConfigError, match="dict inputs"):
            run()
        return
    result = run()
    assert result.summary["status"] == "completed"
    assert 0 <= result.metrics["test/sentiment/accuracy"] <= 100


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES.names()))
def test_every_architecture_shares_a_text_encoder(
    tmp_path: Path, text_model: dict[str, str], architecture: str
) -> None:
    torch.manual_seed(0)
    tasks = [ct.Task("sentiment", num_classes=2), ct.Task("rating", kind="regression")]
    model = ct.MultiTaskModel(
        {"name": "transformer", "model": text_model["model"]}, tasks, architecture=architecture
    )
    rows = reviews(32, 0, 3)
    x = tokenize([r[0] for r in rows], load_tokenizer(text_model["tokenizer"]), max_length=16)
    y = {"sentiment": torch.tensor([r[1] for r in rows]), "rating": torch.tensor([r[2] for r in rows])}
    data = ct.ArrayDataset(x, y)
    result = ct.fit(
        model, method="multitask", weighting="uncertainty", data=data, eval={"train": data}, steps=2,
        batch_size=8, output_dir=tmp_path,
    )  # fmt: skip
    assert result.summary["status"] == "completed"
    assert {"train/sentiment/accuracy", "train/rating/mse"} <= set(result.metrics)


def write_csv(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    lines = ["text,sentiment,rating"] + [f"{t},{s},{r:.2f}" for t, s, r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_cli_runs_evaluates_and_resumes_a_text_config(tmp_path: Path, text_model: dict[str, str]) -> None:
    source = write_csv(tmp_path / "books.csv", reviews(96, 0, 1))
    # shorter target reviews: each file is padded to its own longest text, so their token ids differ in length
    target = write_csv(tmp_path / "kitchen.csv", reviews(64, 1, 2, longest=4))
    dataset = {"name": "text", "text": "text", "tokenizer": text_model["tokenizer"], "max_length": 16}
    labels = {"sentiment": {"column": "sentiment"}, "rating": {"column": "rating", "kind": "regression"}}
    config = {
        "name": "reviews",
        "seed": 0,
        "output_dir": str(tmp_path / "runs"),
        "tasks": [{"name": "sentiment", "num_classes": 2}, {"name": "rating", "kind": "regression"}],
        "data": {
            "train": {
                "source": {"dataset": {**dataset, "path": str(source), "labels": labels, "test_fraction": 0}},
                "target": {
                    "dataset": {**dataset, "path": str(target), "labels": labels, "test_fraction": 0},
                    "labeled": False,
                },
            },
            "eval": {
                "kitchen": {"dataset": {**dataset, "path": str(target), "labels": labels, "test_fraction": 0}}
            },
        },
        "model": {"backbone": {"name": "transformer", "model": text_model["model"]}},
        "method": {"name": "dann", "hidden": 8, "warmup_steps": 8},  # a warm-up independent of train.steps
        "weighting": "dwa",
        "optim": {"name": "adamw", "lr": 0.001, "layer_decay": 0.8},
        "train": {"steps": 8, "batch_size": 16, "eval_every": 4, "log_every": 2},
    }
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump(config))
    done = run_cli("run", str(full), "-q")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "runs" / "reviews" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"kitchen/sentiment/accuracy", "kitchen/rating/mse"} <= set(summary["final"])

    evaluated = run_cli("evaluate", str(tmp_path / "runs" / "reviews"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "kitchen" in evaluated.stdout and "sentiment" in evaluated.stdout

    # a run stopped after 4 steps and resumed to 8 ends where the uninterrupted one did
    part = tmp_path / "part.yaml"
    part.write_text(yaml.safe_dump({**config, "name": "part", "train": {**config["train"], "steps": 4}}))
    assert run_cli("run", str(part), "-q").returncode == 0
    resumed = run_cli("run", str(part), "--resume", "-q", "train.steps=8")
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((tmp_path / "runs" / "part" / "summary.json").read_text())
    assert again["final"] == summary["final"]


def test_adaptation_on_a_frozen_cached_encoder_encodes_each_text_once(
    tmp_path: Path, text_model: dict[str, str]
) -> None:
    """DANN with finetune: linear_probe and cache: true: the encoder never changes, and every text is encoded
    once however many steps and evaluations read it."""
    torch.manual_seed(0)
    tasks = [ct.Task("sentiment", num_classes=2)]
    backbone = {"name": "transformer", "model": text_model["model"], "cache": True}
    model = ct.MultiTaskModel(backbone, tasks, bottleneck=8)
    encoder = model.backbones()[0].encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    texts = counting(model.backbones()[0])
    source, target = tokenized(text_model, 32, 0, 1), tokenized(text_model, 32, 1, 2, labeled=False)
    held_out = tokenized(text_model, 16, 1, 9)
    result = ct.fit(
        model, method={"name": "dann", "hidden": 8, "finetune": "linear_probe"}, source=source, target=target,
        eval={"test": held_out}, steps=12, batch_size=8, eval_every=4, output_dir=tmp_path,
    )  # fmt: skip
    assert result.summary["status"] == "completed"
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert sum(texts) <= 32 + 32 + 16  # 12 steps x 16 texts and 3 evaluations, but each text encoded once


def test_adapting_frozen_features_without_a_bottleneck_and_tent_with_a_strategy_are_refused(
    tmp_path: Path, text_model: dict[str, str]
) -> None:
    tasks = [ct.Task("sentiment", num_classes=2)]
    source, target = tokenized(text_model, 16, 0, 1), tokenized(text_model, 16, 1, 2, labeled=False)
    frozen = ct.MultiTaskModel({"name": "transformer", "model": text_model["model"]}, tasks)
    with pytest.raises(ct.ConfigError, match="every shared parameter is frozen.*model.bottleneck"):
        ct.fit(frozen, method={"name": "dann", "hidden": 8, "finetune": "linear_probe"}, source=source,
               target=target, steps=1, output_dir=tmp_path)  # fmt: skip
    # adapting the outputs on frozen features is fine
    result = ct.fit(frozen, method={"name": "mcc", "finetune": "linear_probe"}, source=source, target=target,
                    steps=2, batch_size=8, output_dir=tmp_path)  # fmt: skip
    assert result.summary["status"] == "completed"
    with_norm = ct.MultiTaskModel({"name": "transformer", "model": text_model["model"]}, tasks, bottleneck=8)
    with pytest.raises(ct.ConfigError, match="chooses what adapts itself.*remove method.finetune"):
        ct.fit(with_norm, method={"name": "tent", "finetune": "linear_probe"}, target=target, steps=1,
               output_dir=tmp_path)  # fmt: skip


def test_text_tokenized_for_another_model_is_refused(tmp_path: Path, text_model: dict[str, str]) -> None:
    """A model folder with its own tokenizer.json takes text tokenized by that tokenizer (or a byte-identical
    copy) only: any other tokenizer's ids would name other words."""
    import shutil

    folder = tmp_path / "bert_with_tokenizer"
    shutil.copytree(text_model["model"], folder)
    shutil.copy(text_model["tokenizer"], folder / "tokenizer.json")
    model = ct.MultiTaskModel(
        {"name": "transformer", "model": str(folder)}, [ct.Task("sentiment", num_classes=2)]
    )
    rows = reviews(8, 0, 0)
    dataset = {"name": "text", "text": "text", "labels": {"sentiment": "sentiment"}, "test_fraction": 0}
    csv = write_csv(tmp_path / "r.csv", rows)
    copy = ct.load_dataset({**dataset, "path": str(csv), "tokenizer": text_model["tokenizer"]})
    own = ct.load_dataset({**dataset, "path": str(csv), "tokenizer": str(folder)})
    for data in (copy, own):
        assert ct.extract_features(model, data).shape == (8, model.backbones()[0].num_features)
    other = tmp_path / "other" / "tokenizer.json"
    save_tokenizer(other, specials=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EXTRA]"])
    foreign = ct.load_dataset({**dataset, "path": str(csv), "tokenizer": str(other)})
    with pytest.raises(
        DataError, match=r"tokenized by .*other.*has its own tokenizer.*Set the dataset's tokenizer: to"
    ):
        ct.fit(model, data=foreign, steps=1, batch_size=4, output_dir=tmp_path / "runs", progress=None)
