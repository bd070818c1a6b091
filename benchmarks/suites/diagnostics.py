"""Diagnostics on cases with a known answer (runs go to a fresh temporary directory: nothing is reused).

- **Negative transfer** (``crosstask negative-transfer``), 3 seeds of the joint run and of every task alone,
  on two worlds of the ``synthetic`` dataset (``WORLDS``; the seeds vary the training):
  *related*: five tasks of one planted group (relatedness 0.98), each with its own 30 training samples in
  32 dimensions, one shared tanh layer: pooling related, scarce data helps (planted answer: positive
  transfer; tasks that label the *same* samples gain little, as the labels add almost no information);
  *competing*: the same group labelling 30 shared samples, plus an unrelated sixth task, through a shared
  bottleneck of one unit: the
  group takes the unit, the sixth task loses it (planted answer: negative transfer for it). The mean
  gradient cosines the gradient-conflict monitor measured are reported beside the verdicts; averaged over a
  whole run they are not a verdict (near a stationary point of the summed loss the objectives' gradients
  cancel, so even related tasks' cosines turn negative).
- **Grouping** (``crosstask group``): nine tasks in three planted groups (relatedness 0.95; each seed its
  own synthetic world, so the groups are planted anew), the TAG
  lookahead affinity from one joint run, the best partition for a budget of 3; adjusted Rand index against
  the planted groups per seed, and the time to a grouping against training every pair of tasks (the
  pairwise alternative TAG is compared with).
- **Grouping on real data**: UCI Adult as six binary tasks (``configs/adult_6tasks.yaml``, 3 seeds),
  ``crosstask group --budget 3 --train``: Δm% (against one-per-task, lower is better) of the chosen groups and
  of all-in-one per seed, and their paired difference with a paired t-test; the goal is the groups no
  worse than all-in-one. Left out when the data is not found.
- **Transferability** (``_transferability_zoo.py``): LogME, LEEP, NCE and H-score (plain and shrunk) of
  nine source models against their fine-tuned accuracy on a few-label target, Kendall's τ and weighted τ
  over the zoo: MLPs on variants of scikit-learn's digits, and LeNets on variants of MNIST fine-tuned on
  USPS with 10 labels per class (real data; left out without it).
- **Domain distance**: proxy A-distance between unrotated and rotated scikit-learn digits (disjoint halves,
  both with a random rotation in ±20° so that angle 0 is not trivially identical) for angles 0-90°: it
  must grow with the angle.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.records import Record
from benchmarks.suites._transferability_zoo import zoo_records
from crosstask.analysis.grouping import adjusted_rand_index, best_grouping
from crosstask.analysis.grouping_runs import read_affinity, with_affinity_monitor
from crosstask.analysis.negative_transfer import NEGATIVE, POSITIVE, multitask_verdicts
from crosstask.experiment import run as run_experiment

SEEDS = [0, 1, 2]
WORLDS = [0, 1]
ANGLES = [0, 15, 30, 60, 90]
log = logging.getLogger(__name__)


def synthetic_experiment(
    name: str,
    output: Path,
    seed: int,
    groups: list[list[int]],
    *,
    hidden: list[int],
    n: int,
    dim: int,
    relatedness: float,
    steps: int,
    activation: str = "tanh",
    world: int = 0,
    multi_input: bool = False,
) -> dict[str, Any]:
    """A multi-task experiment on the synthetic world ``world`` (its task weights) trained with ``seed``;
    ``multi_input``: each task labels its own ``n`` samples (a domain of the same, unshifted world) instead
    of all tasks labelling the same ``n``."""
    tasks = sum(len(g) for g in groups)
    dataset = {
        "name": "synthetic",
        "num_tasks": tasks,
        "groups": groups,
        "relatedness": relatedness,
        "dim": dim,
        "seed": world,
    }
    train = {"train": {"dataset": {**dataset, "n": n}}}
    if multi_input:
        train = {
            f"d{i}": {"dataset": {**dataset, "n": n, "domain": i, "shift": 0.0}, "tasks": [f"t{i}"]}
            for i in range(tasks)
        }
    return {
        "name": f"{name}_seed{seed}",
        "seed": seed,
        "output_dir": str(output),
        "tasks": [{"name": f"t{i}", "num_classes": 2} for i in range(tasks)],
        "data": {
            "train": train,
            "eval": {"test": {"dataset": {**dataset, "split": "test", "n_test": 2000}}},
        },
        "model": {"backbone": {"name": "mlp", "hidden": hidden, "activation": activation}},
        "method": "multitask",
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"steps": steps, "batch_size": 32, "log_every": steps},
    }


SCENARIOS = {  # the planted negative-transfer cases: groups, model, data, and the answer per task
    "related": {
        "groups": [[0, 1, 2, 3, 4]],
        "hidden": [16],
        "multi_input": True,
        "answer": {f"t{i}": POSITIVE for i in range(5)},
    },
    "competing": {
        "groups": [[0, 1, 2, 3, 4], [5]],
        "hidden": [16, 1],
        "multi_input": False,
        "answer": {"t5": NEGATIVE},
    },
}


def negative_transfer_case(scenario: str, output: Path, seeds: list[int], world: int = 0) -> dict[str, Any]:
    """The verdicts of one planted scenario: per task, the verdict, gain and p-value; and the mean gradient
    cosine of each task with the others (monitor gradient_conflict)."""
    spec = SCENARIOS[scenario]
    runs = []
    for seed in seeds:
        config = synthetic_experiment(
            scenario,
            output,
            seed,
            spec["groups"],
            hidden=spec["hidden"],
            n=30,
            dim=32,
            relatedness=0.98,
            steps=400,
            world=world,
            multi_input=spec["multi_input"],
        )
        config["train"]["monitors"] = [{"name": "gradient_conflict", "every": 10}]
        runs.append(run_experiment(config, baselines=True).run_dir)
    verdicts = {v.task: v for v in multitask_verdicts(runs)}
    cosine = np.mean([conflict_cosine(r) for r in runs], axis=0)
    group = spec["groups"][0]
    within = float(np.mean([cosine[i, j] for i in group for j in group if i != j]))
    outside = [t for g in spec["groups"][1:] for t in g]
    across = float(np.mean([cosine[i, j] for i in outside for j in group])) if outside else None
    return {"verdicts": verdicts, "answer": spec["answer"], "runs": runs, "within": within, "across": across}


def conflict_cosine(run_dir: Path) -> np.ndarray:
    """The mean gradient cosine matrix a run's gradient_conflict monitor measured."""
    report = json.loads((Path(run_dir) / "diagnostics" / "gradient_conflict.json").read_text())
    return np.asarray(report["cosine"]["mean"])


def grouping_case(output: Path, seed: int) -> dict[str, Any]:
    planted = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    config = synthetic_experiment(
        "grouping",
        output,
        seed,
        planted,
        hidden=[64, 16],
        n=2000,
        dim=16,
        relatedness=0.95,
        steps=300,
        activation="relu",
        world=seed,
    )
    started = time.perf_counter()
    result = run_experiment(with_affinity_monitor(config, every=10))
    names, affinity, _ = read_affinity(result.run_dir)
    grouping = best_grouping(affinity, 3, names)
    seconds = time.perf_counter() - started
    return {
        "ari": adjusted_rand_index(grouping.groups, planted),
        "groups": grouping.names,
        "seconds": seconds,
        "config": config,
    }


ADULT = Path(__file__).resolve().parents[2] / "configs" / "adult_6tasks.yaml"


def adult_grouping(output: Path, seeds: list[int]) -> list[Record]:
    """Δm% of the groups ``crosstask group --budget 3 --train`` chooses on Adult's six tasks, and of all-in-one,
    one run of each per seed; the paired difference (grouped − all-in-one) with a paired t-test."""
    from scipy import stats

    from crosstask.analysis.grouping_runs import group_tasks
    from crosstask.errors import CrosstaskError

    reports = []
    for seed in seeds:
        try:
            overrides = [f"output_dir={output / 'adult' / str(seed)}", f"seed={seed}"]
            reports.append(group_tasks(ADULT, 3, overrides, train=True))
        except CrosstaskError as exc:  # no data here: say so instead of a record
            log.warning("Adult grouping left out: %s", exc)
            return []
        log.info("Adult seed %d: groups %s, Δm %s", seed, reports[-1]["groups"], reports[-1]["delta_m"])
    values = {option: [r["delta_m"][option] for r in reports] for option in ("all_in_one", "grouped")}
    differences = [g - a for g, a in zip(values["grouped"], values["all_in_one"], strict=True)]
    paired = ""
    if len(seeds) > 1 and len(set(differences)) > 1:
        paired = f"; paired t-test p {stats.ttest_rel(values['grouped'], values['all_in_one']).pvalue:.3g}"
    groups = "; ".join(
        f"seed {seed}: " + " ".join("{" + ", ".join(g) + "}" for g in r["groups"])
        for seed, r in zip(seeds, reports, strict=True)
    )
    notes = {
        "all_in_one": "per seed " + ", ".join(f"{v:+.3f}" for v in values["all_in_one"]),
        "grouped": (
            "per seed "
            + ", ".join(f"{v:+.3f}" for v in values["grouped"])
            + f"; grouped − all-in-one {statistics.fmean(differences):+.3f}{paired}; groups {groups}"
        ),
    }
    return [
        Record.measured(
            "diagnostics/grouping_adult",
            option,
            "Δm% vs one-per-task (6 tasks, budget 3)",
            values[option],
            seeds,
            False,
            notes[option],
        )
        for option in ("all_in_one", "grouped")
    ]


def pairwise_seconds(config: dict[str, Any], output: Path) -> float:
    """Training every pair of tasks of ``config`` (the exhaustive pairwise alternative), in seconds."""
    from crosstask.baselines import tasks_config
    from crosstask.config import validate_config

    experiment = validate_config(config)
    names = [t.name for t in experiment.tasks]
    started = time.perf_counter()
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = tasks_config(experiment, [a, b]).model_dump(mode="json")
            pair["output_dir"] = str(output / "pairs")
            run_experiment(pair)
    return time.perf_counter() - started


def rotated_digits_distance(seed: int) -> dict[int, float]:
    """Proxy A-distance between halves of the digits, the second rotated by each angle (both jittered)."""
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    from crosstask.analysis.domain_distance import proxy_a_distance

    images = load_digits().images
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    source, target = images[order[: len(images) // 2]], images[order[len(images) // 2 :]]

    def jitter(batch: np.ndarray, angle: float) -> np.ndarray:
        return np.stack([rotate(im, angle + rng.uniform(-20, 20), reshape=False, order=1) for im in batch])

    xs = jitter(source, 0).reshape(len(source), -1)
    return {
        angle: proxy_a_distance(xs, jitter(target, angle).reshape(len(target), -1), seed=seed)
        for angle in ANGLES
    }


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="crosstask-diagnostics-") as tmp:
        output = Path(tmp)
        for scenario, world in ((s, w) for s in SCENARIOS for w in WORLDS):
            case = negative_transfer_case(scenario, output, seeds, world)
            answer, verdicts = case["answer"], case["verdicts"]
            hits = [verdicts[task].verdict == expected for task, expected in answer.items()]
            wrong = [t for t, v in verdicts.items() if t not in answer and v.verdict == NEGATIVE]
            notes = "; ".join(
                f"{t}: {v.verdict} (gain {v.gain:+.2f}, p {v.p_value:.3g})"
                for t, v in sorted(verdicts.items())
            )
            notes += f"; mean gradient cosine within the group {case['within']:+.3f}"
            if case["across"] is not None:
                notes += f", of the other task with the group {case['across']:+.3f}"
            records.append(
                Record.measured(
                    "diagnostics/negative_transfer",
                    f"{scenario} (world {world})",
                    "planted verdicts found %",
                    [100.0 * sum(hits) / len(hits)],
                    seeds,
                    True,
                    notes + (f"; unexpected negative: {wrong}" if wrong else ""),
                )
            )
            log.info("%s: %s", scenario, notes)
        aris, seconds, config = [], [], None
        for seed in seeds:
            case = grouping_case(output, seed)
            aris.append(case["ari"])
            seconds.append(case["seconds"])
            config = case["config"]
            log.info("grouping seed %d: ARI %.3f, groups %s", seed, case["ari"], case["groups"])
        records.append(
            Record.measured(
                "diagnostics/grouping",
                "task_affinity",
                "adjusted Rand index (9 tasks, 3 planted groups)",
                aris,
                seeds,
                True,
                "per seed " + ", ".join(f"{a:.3f}" for a in aris),
            )
        )
        pairs = pairwise_seconds(config, output)
        records.append(
            Record.measured(
                "diagnostics/grouping",
                "task_affinity",
                "time to a grouping / time to train every pair",
                [s / pairs for s in seconds],
                seeds,
                False,
                f"one joint run with the affinity monitor {statistics.fmean(seconds):.1f} s; 36 pair runs {pairs:.1f} s",
            )
        )
        records += adult_grouping(output, seeds)
    records += zoo_records(seeds, "digits_zoo")
    records += zoo_records(seeds, "mnist_usps_zoo")
    by_angle: dict[int, list[float]] = {angle: [] for angle in ANGLES}
    for seed in seeds:
        distances = rotated_digits_distance(seed)
        log.info("PAD seed %d: %s", seed, distances)
        for angle, value in distances.items():
            by_angle[angle].append(value)
    for angle, values in by_angle.items():
        records.append(
            Record.measured(
                "diagnostics/domain_distance",
                f"rotation {angle}°",
                "proxy A-distance (digits)",
                values,
                seeds,
                True,
                "per seed " + ", ".join(f"{v:.3f}" for v in values),
            )
        )
    return records
