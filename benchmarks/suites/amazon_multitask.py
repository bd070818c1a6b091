"""Multi-task learning on text: one review's sentiment, star rating and product domain from one encoder.

Protocol (``configs/text/amazon_multitask.yaml``): Blitzer et al.'s 8000 labelled reviews of the four domains
(books, dvd, electronics, kitchen) in one fixed 80/20 split (``split_seed``: 6400 training, 1600 test reviews);
tasks: sentiment (2 classes), rating (stars as a regression target) and domain (4 classes). Encoder:
all-MiniLM-L6-v2, frozen with its features cached, then a shared bottleneck of 256 (Linear-BN-ReLU) and
one head per task: hard sharing of the bottleneck. Adam 1e-3, batches of 64, 2000 steps; test scores of the
final model. Single-task baselines: the same config with one task (``crosstask.baselines``). No published
number uses this split: the comparison is with our own single-task runs (Δm%, Maninis et al. 2019).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.multitask import compare_weightings
from benchmarks.records import Record

SEEDS = [0, 1, 2]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "text" / "amazon_multitask.yaml"
SCORES = {"sentiment": "accuracy", "rating": "mae", "domain": "accuracy"}
# two loss weightings (one static, one learned) and one gradient weighting on the shared bottleneck
WEIGHTINGS = {
    "equal": {"name": "equal"},
    "uncertainty": {"name": "uncertainty"},
    "dwa": {"name": "dwa"},
    "pcgrad": {"name": "pcgrad"},
}


def run(options: dict) -> list[Record]:
    steps = options.get("steps") or (50 if options["quick"] else None)
    short = [f"train.steps={steps}", f"train.eval_every={steps}"] if steps else []
    output = "runs/benchmarks/" + ("quick/" if options["quick"] else "") + "amazon_multitask"
    chosen = {k: v for k, v in WEIGHTINGS.items() if not options.get("methods") or k in options["methods"]}
    return compare_weightings("amazon_multitask", CONFIG, SCORES, chosen, options, short, output)
