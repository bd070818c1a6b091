"""MNIST→USPS, source-only LeNet with the Transfer-Learning-Library protocol (configs/mnist_usps_source_only.yaml).

TLlib reports the best USPS-test accuracy over its 20 per-epoch evaluations; we record that number (the
``train.select`` metric of the config) and also the accuracy of the final model, which selects nothing on
the test set.

Runs go to ``runs/benchmarks/mnist_usps/source_only_seed<N>`` and are resumed: a finished run is reused,
an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import crosstask as ct
from benchmarks.records import Record

SEEDS = [0, 1, 2]
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "mnist_usps_source_only.yaml"
log = logging.getLogger(__name__)


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    quick = ["train.steps=2500", "train.eval_every=500"] if options["quick"] else []
    output_dir = "runs/benchmarks/" + ("quick/mnist_usps" if options["quick"] else "mnist_usps")
    best, final, mnist = [], [], []
    for seed in seeds:
        result = ct.run(
            CONFIG,
            [
                *quick,
                f"seed={seed}",
                f"output_dir={output_dir}",
                f"name=source_only_seed{seed}",
            ],
            resume=True,
        )
        summary = result.summary
        best.append(summary["best"]["value"])
        final.append(summary["final"]["usps_test/digit/accuracy"])
        mnist.append(summary["final"]["mnist_test/digit/accuracy"])
        log.info("seed %d: best %.2f final %.2f (%s)", seed, best[-1], final[-1], result.run_dir)
    name = "mnist_usps"
    return [
        Record.measured(
            name,
            "source_only",
            "usps_test accuracy % (best of 20 epoch evaluations)",
            best,
            seeds,
            True,
            "TLlib protocol: selected on USPS test, as TLlib does; per seed "
            + ", ".join(f"{v:.2f}" for v in best),
        ),
        Record.measured(
            name,
            "source_only",
            "usps_test accuracy % (final model)",
            final,
            seeds,
            True,
            "per seed " + ", ".join(f"{v:.2f}" for v in final),
        ),
        Record.measured(name, "source_only", "mnist_test accuracy % (final model)", mnist, seeds, True),
    ]
