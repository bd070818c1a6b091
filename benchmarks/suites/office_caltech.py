"""Office-Caltech10 SURF, all 12 domain pairs: every shallow adapter × {1-NN, logistic regression}.

Protocol of the GFK/TCA/JDA papers (Gong et al. 2012, Pan et al. 2011, Long et al. 2013): 800-bin SURF
histograms, each divided by its sum and z-scored within its domain (dataset ``office_caltech_surf``); all
samples of the source domain are labeled, all samples of the target domain are unlabeled during adaptation
and then scored (accuracy %, transductive). Published 1-NN averages over the 12 pairs: no adaptation 31.4,
TCA 43.6, JDA 46.3.

Hyperparameters: one setting for all pairs, never chosen per pair nor by target accuracy. Each adapter
runs with its defaults, which are its paper's settings (CORAL λ = 1;
TCA and JDA k = 100, μ = λ = 1, linear kernel, JDA T = 10; KMM B = 1000, ε = (√n_s - 1)/√n_s, RBF width by
the median heuristic; KLIEP 100 centers, width by its own likelihood cross-validation on the unlabeled
target). TCA's and JDA's implementation conventions (kernel form, unit-norm eigenvectors; see
crosstask.shallow.tca) are the ones that reproduce the published TCA and JDA rows exactly. Subspace
alignment has no fixed dimension in its paper; it uses the same 100 dimensions as TCA and JDA. The linear classifier is scikit-learn's LogisticRegression with its defaults (C = 1, L2, lbfgs),
``max_iter`` raised so that it converges, on the adapter's output as it is (no extra scaling, the same input
1-NN gets). 1-NN ignores sample weights, so KMM and KLIEP with 1-NN equal no adaptation (noted in their
rows). Everything but KLIEP's center draw is deterministic; ``--seeds`` varies only that.

Writes ``office_caltech.{json,md}`` (through benchmarks.run) and ``office_caltech_pairs.md``, the per-pair
table, in benchmarks/results/.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from benchmarks.records import RESULTS, Record, revision_label, suite_revision
from crosstask.data.datasets.base import load_dataset
from crosstask.shallow import build_adapter
from crosstask.shallow.base import SampleWeightIgnored

SEEDS = [0]
SHORT = {"amazon": "A", "caltech": "C", "dslr": "D", "webcam": "W"}
# the column order of the published tables (JDA paper, jindongwang/transferlearning benchmark.md)
PAIRS = [
    ("caltech", "amazon"),
    ("caltech", "webcam"),
    ("caltech", "dslr"),
    ("amazon", "caltech"),
    ("amazon", "webcam"),
    ("amazon", "dslr"),
    ("webcam", "caltech"),
    ("webcam", "amazon"),
    ("webcam", "dslr"),
    ("dslr", "caltech"),
    ("dslr", "amazon"),
    ("dslr", "webcam"),
]
QUICK_PAIRS = [("dslr", "webcam"), ("webcam", "dslr")]
ADAPTERS = ["no_adaptation", "coral", "subspace_alignment", "tca", "jda", "kmm", "kliep"]
REWEIGHTING = {"kmm", "kliep"}
BENCHMARK = "office_caltech"
log = logging.getLogger(__name__)


def classifiers() -> dict[str, Any]:
    """The final estimators: None is the adapters' default 1-NN."""
    return {"1nn": None, "logreg": LogisticRegression(max_iter=5000)}


def pair_name(source: str, target: str) -> str:
    return f"{SHORT[source]}->{SHORT[target]}"


def load_domains(names: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    domains = {}
    for name in sorted(names):
        dataset = load_dataset({"name": "office_caltech_surf", "domain": name})
        domains[name] = (dataset.x.numpy().astype(np.float64), dataset.y.numpy())
    return domains


def evaluate(
    adapter_name: str, estimator: Any, seed: int, pairs: list[tuple[str, str]], domains: dict
) -> tuple[list[float], int]:
    """Target accuracy % on every pair, and how many fits warned that an estimator did not converge."""
    config: dict[str, Any] = {"name": adapter_name}
    if adapter_name == "kliep":
        config["random_state"] = seed
    accuracies, unconverged = [], 0
    for source, target in pairs:
        (Xs, ys), (Xt, yt) = domains[source], domains[target]
        adapter = build_adapter(config, estimator=estimator)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("ignore", SampleWeightIgnored)  # expected for KMM/KLIEP + 1-NN
            adapter.fit(Xs, ys, Xt)
        unconverged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        accuracies.append(100.0 * adapter.score(Xt, yt))
    return accuracies, unconverged


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    pairs = QUICK_PAIRS if options["quick"] else PAIRS
    wanted = options.get("methods")
    domains = load_domains({d for pair in pairs for d in pair})
    mean_metric = f"mean target accuracy % over {len(pairs)} pairs"
    records: list[Record] = []
    table: list[tuple[str, list[float], Record]] = []
    for adapter_name in ADAPTERS:
        for classifier_name, estimator in classifiers().items():
            method = f"{adapter_name}+{classifier_name}"
            if wanted and adapter_name not in wanted and method not in wanted:
                continue
            started = time.perf_counter()
            per_seed = [evaluate(adapter_name, estimator, seed, pairs, domains) for seed in seeds]
            seconds = time.perf_counter() - started
            per_pair = [statistics.fmean(run[0][i] for run in per_seed) for i in range(len(pairs))]
            unconverged = sum(run[1] for run in per_seed)
            notes = ", ".join(f"{pair_name(*p)} {a:.2f}" for p, a in zip(pairs, per_pair, strict=True))
            notes += f"; {seconds:.0f} s for {len(pairs)} pairs × {len(seeds)} seed(s)"
            if unconverged:
                notes += f"; {unconverged} fit(s) warned of non-convergence"
            if adapter_name in REWEIGHTING and estimator is None:
                notes += "; 1-NN ignores sample weights, so this equals no_adaptation+1nn"
            mean = Record.measured(
                BENCHMARK,
                method,
                mean_metric,
                [statistics.fmean(run[0]) for run in per_seed],
                seeds,
                True,
                notes,
            )
            records.append(mean)
            for i, pair in enumerate(pairs):
                records.append(
                    Record.measured(
                        f"{BENCHMARK}/{pair_name(*pair)}",
                        method,
                        "target accuracy %",
                        [run[0][i] for run in per_seed],
                        seeds,
                        True,
                    )
                )
            table.append((method, per_pair, mean))
            log.info("%s: mean %.2f (%s)", method, mean.value, notes)
    path = RESULTS / ("office_caltech_pairs.quick.md" if options["quick"] else "office_caltech_pairs.md")
    path.write_text(pairs_markdown(table, records, pairs, seeds))
    return records


def pairs_markdown(
    table: list[tuple[str, list[float], Record]],
    records: list[Record],
    pairs: list[tuple[str, str]],
    seeds: list[int],
) -> str:
    """Method × pair accuracy table, with the published row under each method that has one."""
    published = {(r.benchmark, r.method): r.published for r in records}
    header = [pair_name(*p) for p in pairs]
    lines = [
        "# Office-Caltech10 SURF: target accuracy % per pair",
        "",
        f"Written by `python -m benchmarks.run office_caltech` ({time.strftime('%Y-%m-%d')}, code "
        f"{revision_label(suite_revision())}, seed(s) {seeds}). "
        "Adapter defaults = each paper's setting, one setting for all pairs (see benchmarks/suites/"
        "office_caltech.py); `1nn` = 1-nearest-neighbour, `logreg` = LogisticRegression(C=1). Rows "
        "`published` are the numbers of benchmarks/published.yaml for the method above them.",
        "",
        "| method | " + " | ".join(header) + " | mean |",
        "|---|" + "---|" * (len(header) + 1),
    ]
    for method, per_pair, mean in sorted(table, key=lambda row: -row[2].value):
        lines.append(
            f"| {method} | " + " | ".join(f"{a:.2f}" for a in per_pair) + f" | **{mean.value:.2f}** |"
        )
        reference = [published.get((f"{BENCHMARK}/{pair_name(*p)}", method)) for p in pairs]
        if mean.published is not None or any(v is not None for v in reference):
            cells = " | ".join("-" if v is None else f"{v:.2f}" for v in reference)
            lines.append(
                f"| published | {cells} | {'-' if mean.published is None else f'{mean.published:.2f}'} |"
            )
    best_method, _, best = max(table, key=lambda row: row[2].value)
    bar = published.get((BENCHMARK, "jda+1nn"))
    if bar is not None:
        verdict = "above" if best.value > bar else "not above"
        lines += [
            "",
            f"Best: `{best_method}` at {best.value:.2f}, {verdict} JDA's published average {bar:.2f}.",
        ]
    else:
        lines += ["", f"Best: `{best_method}` at {best.value:.2f}."]
    return "\n".join(lines) + "\n"
