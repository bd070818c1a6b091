"""UCI Adult as the MMoE census benchmark: hard sharing vs MMoE vs PLE, AUC per task.

Tasks: income > 50K and marital status == Never-married (configs/adult_multitask.yaml). The MMoE paper
(Ma et al. 2018) used the larger Census-Income (KDD) data, which is not available here, so these are our own
baselines: no published number is placed beside them. Test AUC of the model picked on validation
(``train.select: val/income/auc``), mean ± std over the seeds. Runs are resumed through benchmarks/runs.py:
a finished run of the same commit (clean source tree) and config is reused, any other trained again (unless
``--reuse-runs``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import crosstask as ct
from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment

SEEDS = [0, 1, 2]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "adult_multitask.yaml"
ARCHITECTURES = {
    "hard_sharing": {"name": "hard_sharing"},
    "mmoe": {"name": "mmoe", "experts": 8},
    "ple": {"name": "ple"},
}
log = logging.getLogger(__name__)


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    quick = ["train.steps=300", "train.eval_every=100"] if options["quick"] else []
    output = "runs/benchmarks/" + ("quick/adult_mmoe" if options["quick"] else "adult_mmoe")
    records = []
    for label, architecture in ARCHITECTURES.items():
        auc: dict[str, list[float]] = {"income": [], "never_married": []}
        runs: list[RunProvenance] = []
        for seed in seeds:
            config = ct.load_config(
                CONFIG, [*quick, f"seed={seed}", f"output_dir={output}", f"name={label}_seed{seed}"]
            )
            data = config.model_dump(mode="json")
            data["model"]["architecture"] = architecture
            result, provenance = run_experiment(data, reuse=options.get("reuse_runs", False))
            runs.append(provenance)
            best = result.summary["best"]["metrics"] if result.summary.get("best") else result.metrics
            for task in auc:
                auc[task].append(100 * best[f"test/{task}/auc"])  # in %: differences show at 2 decimals
            log.info("%s seed %d: %s", label, seed, {t: v[-1] for t, v in auc.items()})
        note = (
            "our own baseline (the MMoE paper used Census-Income KDD, not available here); best on validation"
        )
        for task, values in auc.items():
            records.append(
                Record.measured(
                    "adult_mmoe", label, f"{task} test AUC %", values, seeds, True, note, runs=runs
                )
            )
    return records
