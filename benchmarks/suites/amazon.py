"""Cross-domain sentiment on Blitzer et al.'s Amazon reviews (2007): 12 source -> target pairs of books (B),
dvd (D), electronics (E) and kitchen (K), source only and adaptation methods on all-MiniLM-L6-v2.

Protocol (the BERT-based papers': DAAT, UDALM): train on the source domain's 2000 labelled reviews; the
adaptation methods also read the target domain's 2000 reviews without their labels; score the accuracy on
the same 2000 target reviews with their labels (transductive: the unlabelled target data are the test
reviews; the papers read a separate pool of about 4000 unlabelled reviews, which we do not have). No model
selection: the final model of each run. Encoder: all-MiniLM-L6-v2 (22.7M parameters, review text truncated at
256 word pieces), **frozen, its features cached** (``configs/text/amazon_<method>.yaml``: ``finetune:
linear_probe``, ``cache: true``), a bottleneck of 256 (Linear-BN-ReLU) and the linear head trained with Adam
(1e-3), batches of 32 source (+ 32 target) reviews, ``train.steps`` 1000; one setting for every pair, never
chosen on target accuracy. Anchors (``benchmarks/published.yaml``; test sets and encoders differ, see each
source): DANN on 5000-d bag-of-words and on mSDA features (Ganin et al. 2016, other target test files of
3-6k reviews), fine-tuned BERT-base source only (88.25 average) and UDALM (Karouzos et al. 2021, 91.74
average, the best BERT-based average found; 110M parameters, the target domain's MLM pre-training).

Records: ``amazon/<S>-><T>`` per pair and method, ``amazon`` the mean over the pairs; ``amazon_pairs.md`` the
per-pair table beside the anchors.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from benchmarks.records import RESULTS, Record, lookup_published
from benchmarks.runs import RunProvenance, run_experiment
from crosstask.errors import ConfigError, DataError

SEEDS = [0, 1, 2]
DOMAINS = {"B": "books", "D": "dvd", "E": "electronics", "K": "kitchen"}
PAIRS = [(s, t) for s in "BDEK" for t in "BDEK" if s != t]
QUICK_PAIRS = [("B", "K"), ("K", "E")]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "text"
# method label -> (config, overrides): every adaptation method on the same frozen, cached encoder
METHODS: dict[str, tuple[str, list[str]]] = {
    "source_only": ("amazon_source_only.yaml", []),
    "dann": ("amazon_dann.yaml", []),
    "cdan": ("amazon_dann.yaml", ["method.name=cdan"]),
    "dan": ("amazon_dann.yaml", ["method={name: dan, finetune: linear_probe}"]),
    "mcc": ("amazon_dann.yaml", ["method={name: mcc, finetune: linear_probe}"]),
    "mdd": ("amazon_dann.yaml", ["method={name: mdd, finetune: linear_probe}"]),
}
BENCHMARK = "amazon"
METRIC = "target accuracy %"
ANCHORS = ["dann_bow", "dann_msda", "bert_source_only", "udalm"]
log = logging.getLogger(__name__)


def pair_name(source: str, target: str) -> str:
    return f"{source}->{target}"


def pair_overrides(source: str, target: str) -> list[str]:
    """The pair's domains in ``configs/text/amazon_*.yaml`` (books -> kitchen there)."""
    overrides = [
        f"data.train.source.dataset.domain={DOMAINS[source]}",
        f"data.eval.target_reviews.dataset.domain={DOMAINS[target]}",
    ]
    return overrides


def run(options: dict) -> list[Record]:
    seeds = options["seeds"]
    pairs = QUICK_PAIRS if options["quick"] else PAIRS
    steps = options.get("steps") or (50 if options["quick"] else None)
    short = [f"train.steps={steps}", f"train.eval_every={steps}"] if steps else []
    output = "runs/benchmarks/" + ("quick/" if options["quick"] else "") + "amazon"
    chosen = [m for m in (options.get("methods") or METHODS) if m in METHODS]
    records: list[Record] = []
    table: dict[str, list[float]] = {}
    for method in chosen:
        config, extra = METHODS[method]
        per_pair: list[list[float]] = []
        runs: list[RunProvenance] = []
        for source, target in pairs:
            overrides = [*extra, *pair_overrides(source, target), *short]
            if config != "amazon_source_only.yaml":
                overrides.append(f"data.train.target.dataset.domain={DOMAINS[target]}")
            values = []
            for seed in seeds:
                name = f"{method}_{source}{target}_seed{seed}"
                try:
                    result, provenance = run_experiment(
                        CONFIGS / config,
                        [*overrides, f"seed={seed}", f"output_dir={output}", f"name={name}"],
                        reuse=options.get("reuse_runs", False),
                    )
                except (DataError, ConfigError) as exc:  # no data or no MiniLM package here: say so
                    log.warning("amazon left out: %s", exc)
                    return records
                runs.append(provenance)
                values.append(result.metrics["target_reviews/sentiment/accuracy"])
                log.info("amazon %s %s seed %d: %.2f", method, pair_name(source, target), seed, values[-1])
            per_pair.append(values)
            records.append(
                Record.measured(
                    f"{BENCHMARK}/{pair_name(source, target)}", method, METRIC, values, seeds, True,
                    "per seed " + ", ".join(f"{v:.2f}" for v in values), protocol=PROTOCOL, runs=runs[-len(seeds):],
                )
            )  # fmt: skip
        means = [statistics.fmean(pair[i] for pair in per_pair) for i in range(len(seeds))]
        table[method] = [statistics.fmean(pair) for pair in per_pair]
        records.append(
            Record.measured(
                BENCHMARK, method, f"mean {METRIC} over {len(pairs)} pairs", means, seeds, True,
                "per pair " + ", ".join(
                    f"{pair_name(*p)} {v:.1f}" for p, v in zip(pairs, table[method], strict=True)
                ),
                protocol=PROTOCOL, runs=runs,
            )
        )  # fmt: skip
    write_pairs(pairs, table)
    return records


PROTOCOL = (
    "frozen all-MiniLM-L6-v2 (22.7M) with cached features, bottleneck 256 + linear head, 1000 steps; test on "
    "the 2000 labelled target reviews, whose texts are also the unlabelled target data"
)


def write_pairs(pairs: list[tuple[str, str]], table: dict[str, list[float]]) -> None:
    """``amazon_pairs.md``: per-pair accuracy of every method (mean over seeds) beside the anchors."""
    header = "| method | " + " | ".join(pair_name(*p) for p in pairs) + " | mean |"
    lines = [
        "# Amazon reviews, 12 pairs: target accuracy % (crosstask: mean over seeds)",
        "",
        f"Protocol: {PROTOCOL}. Anchors: published numbers (benchmarks/published.yaml says under which "
        "protocol each was measured).",
        "",
        header,
        "|---" * (len(pairs) + 2) + "|",
    ]
    for method, values in table.items():
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {method} | {cells} | {statistics.fmean(values):.2f} |")
    for anchor in ANCHORS:
        values = [
            lookup_published(f"{BENCHMARK}/{pair_name(*p)}", anchor, METRIC).get("value") for p in pairs
        ]
        if any(v is None for v in values):
            continue
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {anchor} (published) | {cells} | {statistics.fmean(values):.2f} |")
    (RESULTS / "amazon_pairs.md").write_text("\n".join(lines) + "\n")
