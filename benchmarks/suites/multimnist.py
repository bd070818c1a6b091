"""MultiMNIST (Sener & Koltun 2018) with every registered loss weighting, against single-task baselines.

The protocol of configs/multimnist.yaml: their MultiMNIST construction from the MNIST files, their
LeNet-style encoder and heads, Adam (lr 5e-4, batch 256). We train 3000 steps (about 14 epochs of the
54000 training images) instead of their 100 epochs, to fit 2 CPU cores: our numbers are therefore
compared first with our own single-task baselines, trained by the same tool from the same config, and
shown beside the published table. Test accuracy of the final model; mean ± std over the seeds.

Every weighting runs in its default mode (``on: parameters`` for the gradient weightings, the papers'
setting), and MGDA also as MGDA-UB (``on: representation``, ``normalize: loss+``), the variant Sener & Koltun
report. Runs are resumed through benchmarks/runs.py (benchmarks/multitask.py): a finished run of the same commit (clean
source tree) and config is reused, an interrupted one continues (any other is trained again, unless
``--reuse-runs``), so the suite can be split across processes with ``--methods`` and then run once whole to
write the table. Every
record's ``protocol`` says how many of the paper's 100 epochs were trained.
"""

from __future__ import annotations

from pathlib import Path

import crosstask as ct
from benchmarks.multitask import compare_weightings
from benchmarks.records import Record
from crosstask.config import load_config
from crosstask.data.datasets.base import load_dataset
from crosstask.registry import WEIGHTINGS

SEEDS = [0, 1, 2]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "multimnist.yaml"
PAPER_EPOCHS = 100


def protocol(experiment: ct.Experiment) -> str | None:
    """How many of the paper's 100 epochs the runs train (None if all of them)."""
    train = experiment.train
    images = len(load_dataset(experiment.data.train["train"].dataset))
    epochs = train.steps * train.batch_size / images
    if epochs >= PAPER_EPOCHS:
        return None
    return f"{train.steps} steps of batch {train.batch_size}: about {epochs:.0f} of the paper's {PAPER_EPOCHS} epochs"


def variants() -> dict[str, dict]:
    """Method label -> weighting config, for every registered weighting."""
    out: dict[str, dict] = {}
    for name in WEIGHTINGS.names():
        if name == "static":
            continue  # static with default weights is equal
        cls = WEIGHTINGS.get(name).obj
        default = {"name": name}
        if cls.needs_task_gradients and not cls.supports_parameters:
            default["on"] = "representation"
        out[name] = default
    out["mgda_ub"] = {"name": "mgda", "on": "representation", "normalize": "loss+"}
    return out


def run(options: dict) -> list[Record]:
    quick = ["train.steps=300", "train.eval_every=300"] if options["quick"] else []
    output = "runs/benchmarks/" + ("quick/multimnist" if options["quick"] else "multimnist")
    chosen = variants()
    if options.get("methods"):  # in the order given
        chosen = {k: chosen[k] for k in options["methods"] if k in chosen}
    scores = {"left": "accuracy", "right": "accuracy"}
    differs = protocol(load_config(CONFIG, quick))
    return compare_weightings("multimnist", CONFIG, scores, chosen, options, quick, output, differs)
