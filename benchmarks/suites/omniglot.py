"""Omniglot one-shot classification (Lake, Salakhutdinov & Tenenbaum 2015): every meta-learner and Chen et
al.'s baseline on Lake's 20 within-alphabet 20-way 1-shot runs, learning only from the two "minimal"
background sets.

Protocol: ``configs/meta/omniglot_<method>.yaml`` — the background sets (242 characters; with rotations by
90/180/270° as new classes, 968), the conv-4 of the few-shot literature, 20-way 1-shot training episodes;
the score is the mean error (%) over the 20 runs of the final model (no model selection: the protocol has
no validation set), one run per seed. Lake et al.'s anchors: modified-Hausdorff 1-NN 38.8 % (measured here
too, ``mhd_1nn``, on the 105x105 images as in their demo: ink pixels as point sets centred on their
mean, a query takes the
class of the support image at the smallest modified Hausdorff distance, Dubuisson & Jain 1994), people
4.5 %, Bayesian Program Learning 3.3 % (both with the full background set of 30 alphabets, not the minimal
sets used here). The meta-learners' runs are shorter than their papers' (steps, inner steps, meta-batch:
each config says what it uses); every record's ``protocol`` says so.
The few-shot episodes protocol on the minimal sets is the ``omniglot_episodes`` suite.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

import crosstask as ct
from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment
from crosstask.config import load_config
from crosstask.data.datasets.base import load_dataset
from crosstask.errors import DataError

SEEDS = [0, 1, 2]
METHODS = ["protonet", "baseline", "maml", "fomaml", "metasgd", "anil", "reptile"]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "meta"
BENCHMARK = "omniglot/lake_runs"
METRIC = "mean error over the 20 runs %"
log = logging.getLogger(__name__)


def modified_hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """max(mean_a min_b |a − b|, mean_b min_a |a − b|) between two point sets (Dubuisson & Jain 1994)."""
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return float(max(d.min(1).mean(), d.min(0).mean()))


def mhd_errors() -> list[float]:
    """Error (%) of modified-Hausdorff 1-NN on each of Lake's runs, on the original 105x105 images."""
    runs = load_dataset({"name": "omniglot", "part": "runs", "size": 105, "mean": 0.0, "std": 1.0})
    points = [np.argwhere(image[0].numpy() > 0.5).astype(np.float64) for image in runs.x]
    points = [p - p.mean(0) for p in points]  # centred on the ink's mean, as in their demo
    errors = []
    for run in runs.y["run"].unique():
        support = ((runs.y["run"] == run) & (runs.y["role"] == 0)).nonzero().flatten().tolist()
        queries = ((runs.y["run"] == run) & (runs.y["role"] == 1)).nonzero().flatten().tolist()
        wrong = 0
        for q in queries:
            nearest = min(support, key=lambda s: modified_hausdorff(points[q], points[s]))
            wrong += int(runs.y["character"][nearest] != runs.y["character"][q])
        errors.append(100.0 * wrong / len(queries))
    return errors


def training(config: ct.Experiment) -> str:
    """How long and on what a run trains (for the records' ``protocol``)."""
    stream = config.data.train["background"]
    episodes = stream.episodes
    shape = (
        f"{episodes.ways}-way {episodes.shots}-shot episodes, meta-batch {episodes.tasks}"
        if episodes is not None
        else f"batches of {config.train.batch_size}"
    )
    warps = ", Koch et al.'s affine warps" if stream.augment is not None else ""
    return f"{config.train.steps} steps ({shape}{warps})"


def protocol(method: str, overrides: list[str]) -> str:
    config = load_config(CONFIGS / f"omniglot_{method}.yaml", overrides)
    return (
        f"Lake's runs after {training(config)} on the two minimal background sets; the people and BPL numbers "
        "used the full background set"
    )


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    quick = ["train.steps=20", "train.eval_every=20"] if options["quick"] else []
    if options.get("steps"):
        quick = [f"train.steps={options['steps']}", f"train.eval_every={options['steps']}"]
    output = "runs/benchmarks/" + ("quick/omniglot" if options["quick"] else "omniglot")
    try:
        errors = mhd_errors()
    except DataError as exc:  # no Omniglot here: say so instead of records
        log.warning("omniglot left out: %s", exc)
        return []
    records = [
        Record.measured(
            BENCHMARK,
            "mhd_1nn",
            METRIC,
            [float(np.mean(errors))],
            [0],
            False,
            "modified-Hausdorff 1-NN on 105x105 ink points (centred point sets, deterministic); per run "
            + ", ".join(f"{e:.0f}" for e in errors),
        )
    ]
    chosen = [m for m in (options.get("methods") or METHODS) if m in METHODS]
    for method in chosen:
        values: list[float] = []
        runs: list[RunProvenance] = []
        for seed in seeds:
            torch.manual_seed(seed)
            overrides = [*quick, f"seed={seed}", f"output_dir={output}", f"name=omniglot_{method}_seed{seed}"]
            result, provenance = run_experiment(
                CONFIGS / f"omniglot_{method}.yaml", overrides, reuse=options.get("reuse_runs", False)
            )
            runs.append(provenance)
            values.append(100.0 - result.metrics["lake_runs/character/accuracy"])
            log.info("omniglot %s seed %d: %.1f %% error", method, seed, values[-1])
        records.append(
            Record.measured(
                BENCHMARK,
                method,
                METRIC,
                values,
                seeds,
                False,
                "per seed " + ", ".join(f"{v:.1f}" for v in values),
                protocol=protocol(method, quick),
                runs=runs,
            )
        )
    return records
