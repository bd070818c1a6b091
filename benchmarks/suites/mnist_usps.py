"""MNIST→USPS with LeNet and the Transfer-Learning-Library protocol: source-only training and every domain
adaptation method that has a config ``configs/mnist_usps_<method>.yaml`` (source only:
``configs/mnist_usps_source_only.yaml``).

TLlib reports the best USPS-test accuracy over its 20 per-epoch evaluations; we record that number (the
``train.select`` metric of the configs) and also the accuracy of the final model, which selects nothing on
the test set. Every run also scores the unsupervised validators (``train.validation``, added here when a
config has none; MNIST test, 2000 images, is the source validation set): the USPS-test accuracy of the checkpoint each of them picks is recorded too, as the
honest number a user without target labels would get.

``--steps N`` shortens every run to N steps (evaluating 10 times), for machines where the full 50000 steps
per run do not fit; such records say so in their metric name and in their ``protocol``, as do methods whose
config departs from TLlib's recipe (``protocol_notes``); the published number then stays beside them only as
the published protocol's (benchmarks/records.py). Runs go to
``runs/benchmarks/mnist_usps[_<steps>]/<method>_seed<N>`` and are resumed through benchmarks/runs.py: a
finished run of the same commit (clean tree) and config is reused, an interrupted one continues; any other
is trained again in a new directory (unless ``--reuse-runs``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import crosstask as ct
from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment

SEEDS = [0, 1, 2]
FULL_STEPS = 50000  # TLlib: 20 epochs of 2500 iterations, evaluated after each
FULL_METRIC = "usps_test accuracy % (best of 20 epoch evaluations)"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
VALIDATION = {
    "validators": ["source_accuracy", "entropy", "snd", "dev"],
    "target": "target",
    "source": "mnist_val",
}
log = logging.getLogger(__name__)


def methods() -> dict[str, Path]:
    """Method label -> config: source_only first, then every mnist_usps_<method>.yaml."""
    found = {"source_only": CONFIGS / "mnist_usps_source_only.yaml"}
    for path in sorted(CONFIGS.glob("mnist_usps_*.yaml")):
        label = path.stem.removeprefix("mnist_usps_")
        found.setdefault(label, path)
    return found


def protocol_notes(label: str, experiment: dict) -> list[str]:
    """How a method's config departs from the TLlib recipe its published number comes from (as the config's
    header says)."""
    method = experiment["method"]
    notes = []
    if method["name"] == "cdan" and method.get("entropy", True):
        notes.append("CDAN+E; TLlib's number is plain CDAN")
    if label == "bsp":
        notes.append("no 3-epoch source pretraining (TLlib pretrains)")
    if label == "mcd":
        notes.append("heads without batch norm, momentum on the feature extractor (TLlib: neither)")
    if label == "afn":
        notes.append(
            "standard bottleneck dropout (TLlib: L2-preserving), momentum on the backbone (TLlib: none)"
        )
    return notes


def protocol_of(notes: list[str]) -> str | None:
    return "; ".join(notes) or None


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    steps = options.get("steps") or (2500 if options["quick"] else None)
    short = [f"train.steps={steps}", f"train.eval_every={max(1, steps // 10)}"] if steps else []
    output_dir = "runs/benchmarks/" + ("quick/" if options["quick"] else "") + "mnist_usps"
    output_dir += f"_{steps}" if steps else ""
    protocol = f", {steps} steps" if steps else ""
    shortened = [f"{steps} of {FULL_STEPS} steps, 10 evaluations (TLlib: 20)"] if steps else []
    chosen = methods()
    if options.get("methods"):
        chosen = {k: v for k, v in chosen.items() if k in options["methods"]}
    records: list[Record] = []
    for label, config in chosen.items():
        best, final, mnist = [], [], []
        picks: dict[str, list[float]] = {}
        runs: list[RunProvenance] = []
        differs: list[str] = []
        for seed in seeds:
            experiment = ct.load_config(
                config, [*short, f"seed={seed}", f"output_dir={output_dir}", f"name={label}_seed{seed}"]
            ).model_dump(mode="json")
            data = experiment["data"]
            # the source-only runs predate the validators; they are kept as recorded
            if label != "source_only" and experiment["train"].get("validation") is None:
                data["eval"].setdefault(
                    "mnist_val", {"dataset": {"name": "mnist", "split": "test", "limit": 2000}}
                )
                experiment["train"]["validation"] = VALIDATION
            result, provenance = run_experiment(experiment, reuse=options.get("reuse_runs", False))
            runs.append(provenance)
            differs = [*shortened, *protocol_notes(label, experiment)]
            summary = result.summary
            best.append(summary["best"]["value"])
            final.append(summary["final"]["usps_test/digit/accuracy"])
            mnist.append(summary["final"]["mnist_test/digit/accuracy"])
            for name, pick in summary.get("validators", {}).items():
                picks.setdefault(name, []).append(pick["metrics"]["usps_test/digit/accuracy"])
            log.info(
                "%s seed %d: best %.2f final %.2f (%s)", label, seed, best[-1], final[-1], result.run_dir
            )
        per_seed = "per seed " + ", ".join(f"{v:.2f}" for v in best)
        # the same for every record of this method: its protocol and the runs behind it
        same = {"protocol": protocol_of(differs), "runs": runs}
        records += [
            Record.measured(
                "mnist_usps",
                label,
                f"usps_test accuracy % (best of 20 epoch evaluations{protocol})"
                if not steps
                else f"usps_test accuracy % (best of 10 evaluations{protocol})",
                best,
                seeds,
                True,
                "selected on USPS test, as TLlib does; " + per_seed,
                published_metric=FULL_METRIC,
                **same,
            ),
            Record.measured(
                "mnist_usps",
                label,
                f"usps_test accuracy % (final model{protocol})",
                final,
                seeds,
                True,
                "per seed " + ", ".join(f"{v:.2f}" for v in final),
                **same,
            ),
            Record.measured(
                "mnist_usps",
                label,
                f"mnist_test accuracy % (final model{protocol})",
                mnist,
                seeds,
                True,
                "per seed " + ", ".join(f"{v:.2f}" for v in mnist),
                **same,
            ),
        ]
        for name, values in picks.items():
            records.append(
                Record.measured(
                    "mnist_usps",
                    label,
                    f"usps_test accuracy % (checkpoint picked by validator {name}{protocol})",
                    values,
                    seeds,
                    True,
                    "no target labels used to choose; per seed " + ", ".join(f"{v:.2f}" for v in values),
                    **same,
                )
            )
    return records
