"""Omniglot few-shot episodes on the minimal background sets: every meta-learner and the baseline.

Protocol (``omniglot/episodes``): ``configs/meta/omniglot_<method>.yaml``
meta-trained on background set 1 only (with rotations: 544 classes), with ``ways``-way 1-shot training
episodes, and scored on 600 ``ways``-way 1-shot 15-query episodes of set 2's alphabets that set 1 does not
hold (Japanese katakana, Sanskrit, Tagalog: 106 characters); mean accuracy ± the 95 % interval of each run,
for 5 and 20 ways. One seed per method and way (the field reports one run's interval). The anchors in
``benchmarks/published.yaml`` (MAML, Finn et al. 2017; ProtoNet, Snell et al. 2017) come from the standard split
of Vinyals et al. (1200 training characters, against set 1's 136): another protocol, shown as such.
"""

from __future__ import annotations

import logging

from benchmarks.records import Record
from benchmarks.runs import run_experiment
from benchmarks.suites.omniglot import CONFIGS, METHODS, training
from crosstask.config import load_config, validate_config

SEEDS = [0]
EPISODES = "omniglot/episodes"
WAYS = (5, 20)
UNSEEN = {"name": "omniglot", "part": "background2", "exclude_alphabets": ["Greek", "Latin"]}
log = logging.getLogger(__name__)


def episodes_config(method: str, ways: int) -> dict:
    """``configs/meta/omniglot_<method>.yaml`` meta-trained on background set 1 with ``ways``-way episodes and
    scored on 600 ``ways``-way 1-shot episodes of set 2's own alphabets."""
    config = load_config(CONFIGS / f"omniglot_{method}.yaml").model_dump(mode="json")
    stream = config["data"]["train"]["background"]
    stream["dataset"]["part"] = "background1"
    if stream.get("episodes"):
        stream["episodes"]["ways"] = ways
        config["tasks"][0]["num_classes"] = ways
    else:  # the baseline: every class of set 1, rotations included
        config["tasks"][0]["num_classes"] = 136 * 4
    config["data"]["eval"] = {
        "unseen": {
            "dataset": dict(UNSEEN),
            "episodes": {"ways": ways, "shots": 1, "queries": 15, "episodes": 600},
        }
    }
    config["name"] = f"omniglot{ways}way_{method}"
    return config


def episode_records(options: dict, methods: list[str], quick: list[str], output: str) -> list[Record]:
    from crosstask.config import apply_overrides

    records = []
    for ways in WAYS:
        for method in methods:
            values, intervals, runs = [], [], []
            for seed in options["seeds"]:
                config = apply_overrides(
                    episodes_config(method, ways),
                    [
                        *quick,
                        f"seed={seed}",
                        f"output_dir={output}",
                        f"name=omniglot{ways}way_{method}_seed{seed}",
                    ],
                )
                result, provenance = run_experiment(config, reuse=options.get("reuse_runs", False))
                runs.append(provenance)
                values.append(result.metrics["unseen/character/accuracy"])
                intervals.append(result.metrics["unseen/character/accuracy_ci95"])
            records.append(
                Record.measured(
                    EPISODES,
                    method,
                    f"{ways}-way 1-shot accuracy % (600 episodes of unseen alphabets)",
                    values,
                    options["seeds"],
                    True,
                    "per seed "
                    + ", ".join(f"{v:.1f} ± {c:.1f}" for v, c in zip(values, intervals, strict=True)),
                    protocol=f"meta-trained on background set 1 for {training(validate_config(config))}; the meta-learners' "
                    "papers train longer",
                    runs=runs,
                )
            )
    return records


def run(options: dict) -> list[Record]:
    # Only the final evaluation is recorded: 600 unseen-alphabet episodes cost more than 1000 training steps,
    # so the configs' periodic evaluations (monitoring on Lake's 20 runs) are dropped here.
    quick = ["train.steps=20"] if options["quick"] else []
    quick.append("train.eval_every=null")
    if options.get("steps"):
        quick = [f"train.steps={options['steps']}", "train.eval_every=null"]
    output = "runs/benchmarks/" + ("quick/omniglot_episodes" if options["quick"] else "omniglot_episodes")
    chosen = [m for m in (options.get("methods") or METHODS) if m in METHODS]
    return episode_records(options, chosen, quick, output)
