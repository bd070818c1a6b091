"""MultiMNIST (Sener & Koltun 2018) with every registered loss weighting, against single-task baselines.

The protocol of configs/multimnist.yaml: their MultiMNIST construction from the MNIST files, their
LeNet-style encoder and heads, Adam (lr 5e-4, batch 256). We train 3000 steps (about 14 epochs of the
54000 training images) instead of their 100 epochs, to fit 2 CPU cores: our numbers are therefore
compared first with our own single-task baselines, trained by the same tool from the same config, and
shown beside the published table. Test accuracy of the final model; mean ± std over the seeds.

Every weighting runs in its default mode (``on: parameters`` for the gradient weightings, the papers'
setting), and MGDA also as MGDA-UB (``on: representation``, ``normalize: loss+``), the variant Sener & Koltun
report. Runs are resumed through benchmarks/runs.py: a finished run of the same commit (clean source tree)
and config is reused, an interrupted one continues (any other is trained again, unless ``--reuse-runs``), so
the suite can be split across processes with ``--methods`` and then run once whole to write the table. Every
record's ``protocol`` says how many of the paper's 100 epochs were trained.
"""

from __future__ import annotations

import logging
from pathlib import Path

import crosstask as ct
from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment
from crosstask.baselines import single_task_config
from crosstask.config import load_config
from crosstask.data.datasets.base import load_dataset
from crosstask.evaluation.delta_m import delta_m
from crosstask.registry import WEIGHTINGS

SEEDS = [0, 1, 2]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "multimnist.yaml"
PAPER_EPOCHS = 100
log = logging.getLogger(__name__)


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
    seeds = options["seeds"]
    quick = ["train.steps=300", "train.eval_every=300"] if options["quick"] else []
    output = "runs/benchmarks/" + ("quick/multimnist" if options["quick"] else "multimnist")
    records: list[Record] = []

    def accuracies(result: ct.RunResult) -> dict[str, float]:
        return {
            task: result.metrics[f"test/{task}/accuracy"]
            for task in ("left", "right")
            if f"test/{task}/accuracy" in result.metrics
        }

    reuse = options.get("reuse_runs", False)
    differs = protocol(load_config(CONFIG, quick))

    # single-task baselines
    single: dict[str, list[float]] = {"left": [], "right": []}
    single_runs: dict[str, list[RunProvenance]] = {"left": [], "right": []}
    single_metrics: list[dict[str, float]] = []
    for seed in seeds:
        experiment = load_config(CONFIG, [*quick, f"seed={seed}", f"output_dir={output}"])
        merged: dict[str, float] = {}
        for task in ("left", "right"):
            config = single_task_config(experiment, task)
            result, provenance = run_experiment(config, [f"name=single_{task}_seed{seed}"], reuse=reuse)
            single_runs[task].append(provenance)
            single[task].append(result.metrics[f"test/{task}/accuracy"])
            merged.update({k: v for k, v in result.metrics.items() if k.startswith("test/")})
        single_metrics.append(merged)
    for task in ("left", "right"):
        records.append(
            Record.measured(
                "multimnist",
                "single_task",
                f"{task} accuracy %",
                single[task],
                seeds,
                True,
                protocol=differs,
                runs=single_runs[task],
            )
        )

    chosen = variants()
    if options.get("methods"):  # in the order given
        chosen = {k: chosen[k] for k in options["methods"] if k in chosen}
    for label, weighting in chosen.items():
        values: dict[str, list[float]] = {"left": [], "right": []}
        deltas: list[float] = []
        runs: list[RunProvenance] = []
        try:
            for seed, baseline in zip(seeds, single_metrics, strict=True):
                overrides = [*quick, f"seed={seed}", f"output_dir={output}", f"name={label}_seed{seed}"]
                config = load_config(CONFIG, overrides).model_dump(mode="json")
                config["weighting"] = weighting
                result, provenance = run_experiment(config, reuse=reuse)
                runs.append(provenance)
                for task, value in accuracies(result).items():
                    values[task].append(value)
                deltas.append(
                    delta_m({k: v for k, v in result.metrics.items() if k.startswith("test/")}, baseline)
                )
        except ct.CrosstaskError as exc:
            log.warning("%s failed: %s", label, exc)
            records.append(
                Record.measured(
                    "multimnist",
                    label,
                    "failed",
                    [float("nan")],
                    seeds,
                    True,
                    str(exc)[:300],
                    protocol=differs,
                    runs=runs,
                )
            )
            continue
        for task in ("left", "right"):
            records.append(
                Record.measured(
                    "multimnist",
                    label,
                    f"{task} accuracy %",
                    values[task],
                    seeds,
                    True,
                    f"weighting {weighting}",
                    protocol=differs,
                    runs=runs,
                )
            )
        records.append(
            Record.measured(
                "multimnist",
                label,
                "Δm% vs our single-task (lower is better)",
                deltas,
                seeds,
                False,
                protocol=differs,
                runs=[*runs, *single_runs["left"], *single_runs["right"]],
            )
        )
        log.info("%s: left %s right %s", label, values["left"], values["right"])
    return records
