"""Speed of the text backbone: reviews per second of tokenization, inference and training, with and without the
feature cache, all-MiniLM-L6-v2 on Blitzer et al.'s book reviews (truncated at 256 word pieces).

- tokenization: ``crosstask.data.tokenize.tokenize`` of the reviews in one batched call (what the text
  datasets do once, when they load);
- inference: the model's forward pass in batches of 64, the encoder not cached, then cached (cold: the first
  pass encodes and stores every review; warm: the second pass only looks them up);
- training: ``ct.fit`` steps of 32 reviews (the whole Trainer) with the encoder frozen (``finetune:
  linear_probe``, a bottleneck of 256 and the head), not cached and cached (a first run fills the cache, a
  second run over the same reviews is timed warm), and with every weight trained (fine-tuning, AdamW 5e-5).

Threads: ``torch.set_num_threads(1)`` (2 shared cores; one thread per process is this machine's setting for
the other speed suites). The tokenization share: the time to tokenize the training reviews once over the
time of one epoch of training them in each mode. No published anchor: the numbers compare our own paths.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

import crosstask as ct
from benchmarks.records import Record
from crosstask.data.datasets.base import load_dataset
from crosstask.data.tokenize import load_tokenizer, tokenize
from crosstask.errors import CrosstaskError
from crosstask.models.backbones.transformer import clear_feature_cache

SEEDS = [0, 1, 2]  # one timing round per seed
BENCHMARK = "text_speed/minilm_amazon_books"
MAX_LENGTH = 256
log = logging.getLogger(__name__)


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"reviews": 64, "train_steps": 4, "finetune_steps": 2, "batch": 32, "eval_batch": 64}
    return {"reviews": 256, "train_steps": 16, "finetune_steps": 4, "batch": 32, "eval_batch": 64}


def model(cache: bool) -> ct.MultiTaskModel:
    torch.manual_seed(0)
    return ct.MultiTaskModel(
        {"name": "transformer", "model": "minilm", "cache": cache},
        [ct.Task("sentiment", num_classes=2)],
        bottleneck={"dim": 256},
    )


def frozen(net: ct.MultiTaskModel) -> ct.MultiTaskModel:
    """The encoder as ``finetune: linear_probe`` leaves it: no gradients, eval mode."""
    net.freeze_backbone()
    return net


def inference_s(net: ct.MultiTaskModel, data, batch: int) -> float:
    net.eval()
    x = data.x
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(data), batch):
            net({k: v[i : i + batch] for k, v in x.items()})
    return time.perf_counter() - started


def training_s(net: ct.MultiTaskModel, data, steps: int, batch: int, finetune: bool, name: str) -> float:
    result = ct.fit(
        net,
        method={"name": "erm"} if finetune else {"name": "erm", "finetune": "linear_probe"},
        data=data,
        steps=steps,
        batch_size=batch,
        optim={"name": "adamw", "lr": 5e-5} if finetune else {"name": "adam", "lr": 1e-3},
        output_dir="runs/benchmarks/text_speed",
        name=name,
        log_every=steps,
        device="cpu",
        progress=None,
    )
    return result.summary["elapsed_s"]


def one_round(data, texts: list[str], size: dict[str, int], seed: int) -> dict[str, float]:
    """Reviews per second of every path, one round."""
    per_s: dict[str, float] = {}
    n = len(texts)
    tokenizer = load_tokenizer("minilm")
    started = time.perf_counter()
    tokenize(texts, tokenizer, MAX_LENGTH)
    per_s["tokenization"] = n / (time.perf_counter() - started)

    clear_feature_cache()
    per_s["inference, not cached"] = n / inference_s(frozen(model(False)), data, size["eval_batch"])
    cached = frozen(model(True))
    per_s["inference, cached (cold)"] = n / inference_s(cached, data, size["eval_batch"])
    per_s["inference, cached (warm)"] = n / inference_s(cached, data, size["eval_batch"])

    batch, steps = size["batch"], size["train_steps"]
    seen = steps * batch
    clear_feature_cache()
    per_s["training, frozen, not cached"] = seen / training_s(
        model(False), data, steps, batch, False, f"plain{seed}"
    )
    epochs = max(1, -(-n // seen))  # fill the cache with every review first (as epoch one of a run does)
    training_s(model(True), data, steps * epochs, batch, False, f"fill{seed}")
    per_s["training, frozen, cached (warm)"] = seen / training_s(
        model(True), data, steps, batch, False, f"warm{seed}"
    )
    fine = size["finetune_steps"]
    per_s["training, fine-tuned"] = (
        fine * batch / training_s(model(False), data, fine, batch, True, f"fine{seed}")
    )
    clear_feature_cache()
    return per_s


def run(options: dict) -> list[Record]:
    torch.set_num_threads(1)
    size = sizes(options["quick"])
    try:
        books = load_dataset({"name": "amazon_reviews", "domain": "books", "max_length": MAX_LENGTH})
    except (CrosstaskError, OSError) as exc:
        log.warning("text_speed skipped: %s", exc)
        return []
    data = books.subset(
        torch.randperm(len(books), generator=torch.Generator().manual_seed(0))[: size["reviews"]]
    )
    texts = data.info["texts"]
    rounds = [one_round(data, texts, size, seed) for seed in options["seeds"]]
    notes = (
        f"{len(texts)} book reviews, {MAX_LENGTH} word pieces at most (median "
        f"{int(data.x['attention_mask'].sum(1).median())}); batches of {size['batch']} for training, "
        f"{size['eval_batch']} for inference; 1 thread"
    )
    records = [
        Record.measured(
            BENCHMARK, path, "reviews/s", [r[path] for r in rounds], options["seeds"], True, notes
        )
        for path in rounds[0]
    ]
    for path in rounds[0]:
        if not path.startswith("training"):
            continue
        shares = [
            100.0 * r[path] / r["tokenization"] for r in rounds
        ]  # tokenize time / train time, per review
        records.append(
            Record.measured(
                BENCHMARK,
                path,
                "tokenization time as % of one training epoch",
                shares,
                options["seeds"],
                False,
                f"tokenizing the reviews once (the dataset does it when it loads) against one epoch of them; "
                f"median tokenization {statistics.median(r['tokenization'] for r in rounds):.0f} reviews/s",
            )
        )
    return records
