"""Few-shot sine-wave regression (Finn, Abbeel & Levine 2017, section 5.1): MAML against the pretrained
baseline, K = 5 and K = 10.

Protocol: ``configs/meta/sinusoid_maml.yaml`` and ``sinusoid_baseline.yaml`` (the paper's network, inner
step, meta-batch and optimizer); K support and K query points per training task, and for K = 10 the
baseline's fine-tuning step 0.02 as in the paper's figure. Test: 600 new waves (another seed), K points to
adapt on and 50 to score, mean squared error after 1 and after 10 gradient steps (the two ends of Finn et
al.'s Figure 3), mean ± std over the seeds. The paper trains 70000 meta-iterations on freshly drawn waves;
here ``train.steps`` (3000 by default) on a pool of 100000 waves: every record's ``protocol`` says so.
Published anchor (Figure 3, no table): at K = 5 and K = 10, MAML's error after one step is a fraction of
the pretrained baseline's, which improves little with more steps. ``maml_pcgrad``: MAML with PCGrad
balancing the 25 episodes of each meta-batch (each episode is an objective), the weighting of meta-objectives
the engine allows for every method.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.records import Record
from benchmarks.runs import RunProvenance, run_experiment
from crosstask.config import load_config
from crosstask.experiment import evaluate_run

SEEDS = [0, 1, 2]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "meta"
SHOTS = (5, 10)
METHODS = ("maml", "baseline", "maml_pcgrad")
VARIANTS = {"maml_pcgrad": ("maml", ["weighting=pcgrad"])}  # a weighting over the meta-batch's 25 episodes
PAPER_STEPS = 70000
log = logging.getLogger(__name__)


def overrides_for(method: str, shots: int) -> list[str]:
    """The K-shot variant of a config: K support and K query points per training task, K to adapt on at test."""
    out = [f"data.train.waves.dataset.points={2 * shots}", f"data.eval.new_waves.dataset.points={shots + 50}"]
    out.append(f"data.eval.new_waves.episodes.shots={shots}")
    if method == "maml":
        out += [f"data.train.waves.episodes.shots={shots}", f"data.train.waves.episodes.queries={shots}"]
    elif shots == 10:
        out.append("method.episode_lr=0.02")  # the paper's fine-tuning step for K = 10
    return out


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    quick = ["train.steps=50", "train.eval_every=50", "data.eval.new_waves.episodes.episodes=50"]
    quick = quick if options["quick"] else []
    if options.get("steps"):
        quick = [f"train.steps={options['steps']}", f"train.eval_every={options['steps']}"]
    output = "runs/benchmarks/" + ("quick/sinusoid" if options["quick"] else "sinusoid")
    chosen = [m for m in (options.get("methods") or METHODS) if m in METHODS]
    records = []
    for shots in SHOTS:
        for method in chosen:
            base, extra = VARIANTS.get(method, (method, []))
            config = CONFIGS / f"sinusoid_{base}.yaml"
            after: dict[int, list[float]] = {1: [], 10: []}
            runs: list[RunProvenance] = []
            for seed in seeds:
                overrides = [
                    *overrides_for(base, shots),
                    *extra,
                    *quick,
                    f"seed={seed}",
                    f"output_dir={output}",
                    f"name=sinusoid_k{shots}_{method}_seed{seed}",
                ]
                result, provenance = run_experiment(config, overrides, reuse=options.get("reuse_runs", False))
                runs.append(provenance)
                after[10].append(result.metrics["new_waves/y/mse"])
                one = "method.test_steps=1" if base == "maml" else "method.episode_steps=1"
                after[1].append(evaluate_run(result.run_dir, "last", [*overrides, one])["new_waves/y/mse"])
                log.info(
                    "sinusoid K=%d %s seed %d: MSE %.3f / %.3f",
                    shots,
                    method,
                    seed,
                    after[1][-1],
                    after[10][-1],
                )
            steps = load_config(config, [*overrides_for(base, shots), *quick]).train.steps
            for count, values in after.items():
                records.append(
                    Record.measured(
                        "sinusoid",
                        method,
                        f"K={shots} MSE after {count} step{'s' if count > 1 else ''}",
                        values,
                        seeds,
                        False,
                        "per seed " + ", ".join(f"{v:.3f}" for v in values),
                        protocol=f"{steps} training steps on a pool of 100000 waves (the paper: {PAPER_STEPS} on fresh waves)",
                        runs=runs,
                    )
                )
    return records
