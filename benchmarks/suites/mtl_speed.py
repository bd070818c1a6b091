"""Speed of loss balancing: time per training step of every registered weighting relative to ``equal`` on the
same model and batch, for 2, 8 and 40 tasks, side by side with LibMTL 1.1.5 and torchjd 0.18 (issue 3).

Setups, as in ``shared/ANCHORS.md``, synthetic data, batch 256:

- ``LeNet-2``: the MultiMNIST LeNet encoder (``lenet``, channels 10/20, 50 features, no fc dropout) on 1x28x28
  inputs, 2 linear heads of 10 classes, cross-entropy;
- ``MLP-8`` / ``MLP-40``: a 256→512→512 MLP encoder, 8 or 40 linear heads of one logit, BCE.

A step is forward + losses + the weighting's backward/aggregation + an SGD step (lr 0.01, momentum 0.9).
crosstask's step is the Trainer's ``_train_step`` without data loading: the model (``MultiTaskModel``), the
weighting object ``WEIGHTINGS.get(name).obj(config, objective_names)``, the optimizer and constant schedule
built as ``crosstask.fit`` builds them, the task losses of the ``multitask`` method, the finiteness check, and
the gradient engine's backward pass (``GradientEngine``, with the Trainer's shared / other parameters and the
representation ``model.forward_all(x).shared``, checked on the graph at every step as in training).
Gradient weightings are timed with ``on: parameters`` and ``on: representation`` where they support it.
Every weighting registered when the suite runs is timed; one that fails is recorded as failed, with its error.

Anchors (``benchmarks/anchors/mtl.py``): LibMTL's and torchjd's own steps for the methods crosstask shares with
them, on copies of the same encoder and heads (same initial weights) and the same batch, with plain torch
losses (as their users write them); ``plain:equal`` is a hand-written PyTorch step of the summed loss.

Timing, in one process: each runner is warmed up, then timed in rounds, one per seed (the MLP-40 setup uses
the first ``ROUNDS_40`` seeds only: its steps are up to 100x slower). In a round the runners go in a shuffled
order, each for a block of consecutive steps (about ``BLOCK_S`` seconds), and crosstask's ``equal`` is timed
before the first and after every ``EQUAL_EVERY`` runners: a runner's ratio in a round is its time per step
over the mean of the two ``equal`` blocks around it. Anchors are relative to the same crosstask ``equal``. A
record's value is the median ratio over rounds; its notes give the absolute milliseconds. Torch runs on one
intra-op thread here (``THREADS``: see there why), restored afterwards. The scaling table (method × 2, 8, 40
tasks) goes to ``benchmarks/results/mtl_speed_scaling.md``.
"""

from __future__ import annotations

import copy
import gc
import importlib
import logging
import math
import os
import pkgutil
import random
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import crosstask as ct
import crosstask.weighting
from benchmarks.anchors import mtl as anchors
from benchmarks.records import RESULTS, Record, revision_label, suite_revision
from crosstask.config import component, validate_component
from crosstask.engine.gradients import GradientEngine
from crosstask.engine.optim import build_optimizer
from crosstask.engine.schedulers import build_scheduler
from crosstask.evaluation.losses import task_loss
from crosstask.registry import OPTIMIZERS, SCHEDULERS, WEIGHTINGS

SEEDS = [0, 1, 2, 3, 4, 5, 6, 7, 8]  # one timing round per seed
ROUNDS_40 = 7  # rounds of the 40-task setup (its slowest steps take about a second)
BATCH = 256
LR, MOMENTUM = 0.01, 0.9
WARMUP = 3  # steps per runner before timing
BLOCK_S = 0.2  # seconds of consecutive steps per timed block
MAX_BLOCK = 25  # steps per block at most
EQUAL_EVERY = 6  # crosstask's equal is timed again after this many runners
METRIC = "time per step relative to equal"
FAMO_GOAL = 1.15
# One intra-op thread. On a 2-core machine that other processes share, two OpenMP threads make a step up to
# 100x slower whenever another process holds a core (measured: 13 ms -> 2 s for equal at 40 tasks); one
# thread is stable. Every runner, crosstask's and the anchors', runs with the same setting.
THREADS = 1
log = logging.getLogger(__name__)

Step = Callable[[], None]


@dataclass
class Setup:
    """A model, a batch and how many rounds to time it."""

    name: str
    backbone: dict
    input_shape: tuple[int, ...]
    tasks: list[ct.Task]
    x: Tensor
    targets: dict[str, Tensor]
    plain_loss: Callable[[Tensor, Tensor], Tensor]
    rounds: list[int]
    base: ct.MultiTaskModel = field(init=False)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        self.base = ct.MultiTaskModel(self.backbone, self.tasks, input_shape=self.input_shape)

    @property
    def benchmark(self) -> str:
        return f"mtl_speed/{self.name}"

    def problem(self) -> anchors.Problem:
        """Copies of the crosstask model's encoder and heads (same weights), the batch and a plain loss."""
        return anchors.Problem(
            encoder=copy.deepcopy(self.base.architecture.trunk),
            heads={t.name: copy.deepcopy(self.base.heads[t.name]) for t in self.tasks},
            x=self.x,
            targets=[self.targets[t.name] for t in self.tasks],
            loss=self.plain_loss,
            lr=LR,
            momentum=MOMENTUM,
        )


def make_setups(seeds: Sequence[int]) -> list[Setup]:
    generator = torch.Generator().manual_seed(0)
    lenet_tasks = [ct.Task("left", num_classes=10), ct.Task("right", num_classes=10)]
    setups = [
        Setup(
            "LeNet-2",
            {"name": "lenet", "channels": [10, 20], "features": 50, "fc_dropout": 0},
            (1, 28, 28),
            lenet_tasks,
            torch.randn(BATCH, 1, 28, 28, generator=generator),
            {t.name: torch.randint(0, 10, (BATCH,), generator=generator) for t in lenet_tasks},
            F.cross_entropy,
            list(seeds),
        )
    ]
    for count in (8, 40):
        tasks = [ct.Task(f"task{i}", "multilabel", outputs=1) for i in range(count)]
        setups.append(
            Setup(
                f"MLP-{count}",
                {"name": "mlp", "hidden": [512, 512]},
                (256,),
                tasks,
                torch.randn(BATCH, 256, generator=generator),
                {t.name: torch.randint(0, 2, (BATCH, 1), generator=generator).float() for t in tasks},
                F.binary_cross_entropy_with_logits,
                list(seeds) if count < 40 else list(seeds)[:ROUNDS_40],
            )
        )
    return setups


# ----------------------------------------------------------------------------- the steps


def crosstask_step(setup: Setup, name: str, on: str | None) -> Step:
    """The Trainer's ``_train_step`` for weighting ``name`` (``on`` for gradient weightings), without data loading."""
    model = copy.deepcopy(setup.base)
    model.train()
    config = validate_component(
        component(WEIGHTINGS), {"name": name, **({"on": on} if on else {})}, "weighting"
    )
    loss_names = model.task_names
    weighting = WEIGHTINGS.get(name).obj(config, loss_names)
    weighting.params.to("cpu")
    optim = validate_component(
        component(OPTIMIZERS), {"name": "sgd", "lr": LR, "momentum": MOMENTUM}, "optim"
    )
    optimizer = build_optimizer(optim, model, list(weighting.params.parameters()))
    # (the weighting's own parameters share the optimizer's groups here; the Trainer keeps them in a
    # group without weight decay, which costs nothing more)
    scheduler = build_scheduler(validate_component(component(SCHEDULERS), "constant"), optimizer, 10**9)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    excluded = {id(p) for p in shared} | {id(p) for p in weighting.params.parameters()}
    other = [p for p in params if id(p) not in excluded]
    engine = GradientEngine(weighting, shared, other)
    tasks = {t.name: t for t in model.tasks}
    state: dict = {
        "step": 0,
        "loss_sum": torch.zeros(len(loss_names)),
        "weights": dict.fromkeys(loss_names, 0.0),
    }

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        output = model.forward_all(setup.x)
        # complete synthetic labels: the Trainer detects that and skips the masking, as here
        losses = {
            n: task_loss(tasks[n], output.outputs[n], setup.targets[n], masked=False) for n in loss_names
        }
        values = torch.stack([losses[n].detach().float() for n in loss_names])
        if not bool(torch.isfinite(values).all()):
            raise RuntimeError(f"non-finite loss at step {state['step'] + 1}")
        penalty = model.regularization()
        penalties = {"architecture": penalty} if penalty is not None else {}
        weights = engine.backward(losses, penalties, output.shared, step=state["step"]).weights
        state["loss_sum"] += values
        for n in loss_names:
            w = weights[n]
            state["weights"][n] = state["weights"][n] + (w.detach() if isinstance(w, Tensor) else w)
        optimizer.step()
        scheduler.step()
        state["step"] += 1

    return step


def plain_step(setup: Setup) -> Step:
    """A hand-written PyTorch step of the summed loss on the same encoder and heads."""
    problem = setup.problem()
    heads = list(problem.heads.values())
    params = [*problem.encoder.parameters(), *(p for h in heads for p in h.parameters())]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    problem.encoder.train()

    def step() -> None:
        z = problem.encoder(problem.x)
        loss = sum(problem.loss(h(z), y) for h, y in zip(heads, problem.targets, strict=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def weighting_variants() -> tuple[list[tuple[str, str | None]], dict[str, str]]:
    """Every registered weighting as ``(name, on)`` (``on`` for gradient weightings), and the weighting
    modules that failed to import, with their error."""
    broken: dict[str, str] = {}
    for info in pkgutil.iter_modules(crosstask.weighting.__path__):
        if info.name.startswith("_"):
            continue
        try:
            importlib.import_module(f"crosstask.weighting.{info.name}")
        except Exception as exc:
            broken[info.name] = describe(exc)
    try:
        names = WEIGHTINGS.names()
    except Exception:  # a module that fails to import: the registry holds the others
        names = WEIGHTINGS.names()
    variants: list[tuple[str, str | None]] = []
    for name in names:
        entry = WEIGHTINGS.get(name)
        if "on" in entry.config.model_fields:
            for on in ("parameters", "representation"):
                if getattr(entry.obj, f"supports_{on}", True):
                    variants.append((name, on))
        else:
            variants.append((name, None))
    return variants, broken


def label_of(name: str, on: str | None) -> str:
    return f"{name}[{on}]" if on else name


def describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return (text[:300] + "...") if len(text) > 300 else text


# ----------------------------------------------------------------------------- timing


def time_block(step: Step, steps: int) -> float:
    """Seconds per step over ``steps`` consecutive steps."""
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


@dataclass
class Timings:
    """Per runner: ratio to equal and milliseconds per step, one value per round; failures; block sizes."""

    ratios: dict[str, list[float]] = field(default_factory=dict)
    ms: dict[str, list[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, int] = field(default_factory=dict)


def measure(setup: Setup, runners: dict[str, Step], timings: Timings, block_s: float) -> None:
    """Warm every runner up, then time them in rounds against crosstask's ``equal``."""
    estimate: dict[str, float] = {}
    for label, step in list(runners.items()):
        try:
            for _ in range(WARMUP - 2):
                step()
            estimate[label] = min(time_block(step, 1), time_block(step, 1))
        except Exception as exc:
            timings.failed[label] = describe(exc)
            del runners[label]
            log.warning("%s %s failed in warm-up: %s", setup.name, label, timings.failed[label])
    if "equal" not in runners:
        raise RuntimeError(f"{setup.name}: crosstask's equal step failed: {timings.failed.get('equal')}")
    timings.blocks = {label: max(1, min(MAX_BLOCK, round(block_s / t))) for label, t in estimate.items()}
    for label in runners:
        timings.ratios[label], timings.ms[label] = [], []

    def timed(label: str) -> float | None:
        try:
            return time_block(runners[label], timings.blocks[label])
        except Exception as exc:
            timings.failed[label] = describe(exc)
            del runners[label]
            return None

    equal = runners["equal"]
    for index, seed in enumerate(setup.rounds):
        started = time.perf_counter()
        gc.collect()
        order = [label for label in runners if label != "equal"]
        random.Random(seed).shuffle(order)
        before = time_block(equal, timings.blocks["equal"])
        timings.ms["equal"].append(1000 * before)
        for start in range(0, len(order), EQUAL_EVERY):
            chunk = {label: timed(label) for label in order[start : start + EQUAL_EVERY] if label in runners}
            after = time_block(equal, timings.blocks["equal"])
            timings.ms["equal"].append(1000 * after)
            reference = (before + after) / 2
            for label, seconds in chunk.items():
                if seconds is not None:
                    timings.ratios[label].append(seconds / reference)
                    timings.ms[label].append(1000 * seconds)
            before = after
        timings.ratios["equal"].append(1.0)
        log.info(
            "%s round %d/%d (seed %d): %.0f s, equal %.1f ms/step",
            setup.name,
            index + 1,
            len(setup.rounds),
            seed,
            time.perf_counter() - started,
            statistics.median(timings.ms["equal"]),
        )


# ----------------------------------------------------------------------------- records


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def failed_record(setup: Setup, label: str, why: str) -> Record:
    return Record.measured(setup.benchmark, label, METRIC, [math.nan], [], False, why.replace("|", "/"))


def runner_record(setup: Setup, label: str, timings: Timings, is_anchor: bool) -> Record:
    if label in timings.failed:
        return failed_record(setup, label, f"failed: {timings.failed[label]}")
    ratios, ms = timings.ratios[label], timings.ms[label]
    seeds = setup.rounds[: len(ratios)]
    notes = (
        f"{median(ms):.1f} ms/step (crosstask equal {median(timings.ms['equal']):.1f} ms); ratio "
        f"{min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} rounds, {timings.blocks[label]} steps per block"
    )
    if is_anchor:
        notes += "; relative to crosstask's equal step timed in the same round"
    if label == "famo":
        notes += f"; goal <= {FAMO_GOAL}: {'met' if median(ratios) <= FAMO_GOAL else 'NOT met'}"
    return Record.measured(setup.benchmark, label, METRIC, [median(ratios)], seeds, False, notes)


def counterpart(anchor: anchors.Anchor, labels: Sequence[str], timings: Timings) -> str | None:
    """The crosstask runner to compare ``anchor`` with: the same ``on`` where crosstask has it, else any
    variant of the same weighting that ran (a loss weighting has none)."""
    exact = label_of(anchor.weighting, anchor.variant)
    ran = [label for label in labels if label not in timings.failed and label in timings.ratios]
    if exact in ran:
        return exact
    same = [label for label in ran if label == anchor.weighting or label.startswith(anchor.weighting + "[")]
    return min(same, key=lambda label: median(timings.ratios[label])) if same else None


def summary_record(
    setup: Setup,
    library: str,
    used: list[anchors.Anchor],
    crosstask_labels: list[str],
    timings: Timings,
    comparisons: dict[tuple[str, str], float],
) -> Record:
    """crosstask's slowdown vs ``library``: the worst ratio crosstask/anchor over the shared methods."""
    pairs: list[tuple[str, str, float]] = []
    for anchor in used:
        if not anchor.compare or anchor.label in timings.failed or anchor.label not in timings.ratios:
            continue
        ours = counterpart(anchor, crosstask_labels, timings)
        if ours is None:
            continue
        ratio = median(timings.ratios[ours]) / median(timings.ratios[anchor.label])
        pairs.append((ours, anchor.label, ratio))
        comparisons[(f"{ours} vs {anchor.label}", setup.name)] = ratio
    metric = "time ratio crosstask / anchor, slowest shared method (goal <= 1)"
    method = f"crosstask_vs_{library}"
    if not pairs:
        return failed_record(setup, method, f"no shared method measured for {library}")
    worst = max(pairs, key=lambda p: p[2])
    geo = math.exp(statistics.fmean(math.log(p[2]) for p in pairs))
    slower = [f"{a} vs {b} {r:.2f}" for a, b, r in pairs if r > 1]
    notes = (
        f"worst: {worst[0]} vs {worst[1]}; geometric mean {geo:.2f} over {len(pairs)} shared methods; "
        f"slower than the anchor: {', '.join(slower) or 'none'}; per method: "
        + ", ".join(f"{a} vs {b} {r:.2f}" for a, b, r in pairs)
    )
    return Record.measured(setup.benchmark, method, metric, [worst[2]], setup.rounds, False, notes)


# ----------------------------------------------------------------------------- the scaling table


def growth(ms: dict[str, dict[str, float]], label: str) -> str:
    """How the extra cost over equal grows from 8 to 40 tasks (same MLP), as an exponent of the task count."""
    try:
        extra8 = ms["MLP-8"][label] - ms["MLP-8"]["equal"]
        extra40 = ms["MLP-40"][label] - ms["MLP-40"]["equal"]
        equal8, equal40 = ms["MLP-8"]["equal"], ms["MLP-40"]["equal"]
    except KeyError:
        return "-"
    if any(math.isnan(v) for v in (extra8, extra40)):
        return "-"
    if extra40 <= 0.15 * equal40:
        return "flat (as equal)"
    if extra8 <= 0.1 * equal8:
        return "grows (none at 8 tasks)"
    return f"~K^{max(0.0, math.log(extra40 / extra8) / math.log(5)):.1f}"


def scaling_markdown(
    setups: list[Setup],
    results: dict[str, Timings],
    labels: list[str],
    comparisons: dict[tuple[str, str], float],
    quick: bool,
    loads: list[tuple[str, float, float]],
) -> str:
    names = [s.name for s in setups]
    ratio = {s.name: {k: median(v) for k, v in results[s.name].ratios.items()} for s in setups}
    ms = {s.name: {k: median(v) for k, v in results[s.name].ms.items()} for s in setups}
    lines = [
        "# Cost of loss balancing as the number of tasks grows" + (" (quick run)" if quick else ""),
        "",
        f"Written by `python -m benchmarks.run mtl_speed` ({time.strftime('%Y-%m-%d')}, code "
        f"{revision_label(suite_revision())}, {torch.get_num_threads()} "
        f"torch thread(s), torch {torch.__version__}; 1-minute load average before -> after each setup: "
        + ", ".join(f"{n} {a:.1f} -> {b:.1f}" for n, a, b in loads)
        + "). Time per training step (forward, losses, balancing, SGD "
        "step; batch 256) relative to crosstask's `equal` on the same model and batch, median over rounds, with "
        "the median milliseconds. LeNet-2: the MultiMNIST LeNet, 2 tasks; MLP-8/40: a 256-512-512 MLP with 8 or "
        "40 one-logit heads. `name[parameters]` / `name[representation]`: a gradient weighting with `on:` "
        "that; `libmtl:` / `torchjd:` rows are those libraries' own steps on the same encoder, heads and batch, "
        "relative to the same crosstask `equal`; `plain:equal` is a hand-written PyTorch step. The last column "
        "is how the extra cost over `equal` grows from 8 to 40 tasks on the same MLP, as a power of the number "
        "of tasks K (`flat`: within 10-15 % of equal at both).",
        "",
        "| method | "
        + " | ".join(f"{n} ({len(next(s for s in setups if s.name == n).tasks)} tasks)" for n in names)
        + " | extra cost, 8 → 40 tasks |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for label in labels:
        cells = []
        for name in names:
            timings = results[name]
            if label in timings.failed:
                cells.append("failed")
            elif label in ratio[name]:
                cells.append(f"{ratio[name][label]:.2f}× ({ms[name][label]:.1f} ms)")
            else:
                cells.append("-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {growth(ms, label)} |")
    if comparisons:
        lines += [
            "",
            "## crosstask against the same method in LibMTL and torchjd",
            "",
            "Time ratio crosstask / anchor (below 1: crosstask faster), from the medians above.",
            "",
            "| pair | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for pair in sorted({p for p, _ in comparisons}):
            cells = [f"{comparisons[(pair, n)]:.2f}" if (pair, n) in comparisons else "-" for n in names]
            lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    failures = sorted({(n, label, results[n].failed[label]) for n in names for label in results[n].failed})
    if failures:
        lines += ["", "## Failures", ""]
        lines += [f"- {n}, `{label}`: {why}" for n, label, why in failures]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the suite


def run(options: dict) -> list[Record]:
    """Time every registered weighting and the anchors on the three setups; write the scaling table."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with warnings.catch_warnings():
            # cvxpy (torchjd's NashMTL) warns at every solve that its problem is not DPP
            warnings.filterwarnings("ignore", message=".*not DPP.*")
            return _run(options)
    finally:
        torch.set_num_threads(threads)


def _run(options: dict) -> list[Record]:
    quick = bool(options.get("quick"))
    seeds = list(options["seeds"])[:2] if quick else list(options["seeds"])
    block_s = 0.05 if quick else BLOCK_S
    options.update(torch_threads=THREADS, rounds_40_tasks=ROUNDS_40, block_s=block_s, warmup_steps=WARMUP)
    variants, broken = weighting_variants()
    log.info("timing %d crosstask runners: %s", len(variants), ", ".join(label_of(*v) for v in variants))
    crosstask_labels = [label_of(*v) for v in variants]
    registered = {name for name, _ in variants}

    install_error = anchors.install()
    anchor_error: dict[str, str] = {}
    if install_error is None:
        anchors.activate()
        for library, module in (("libmtl", "LibMTL.weighting"), ("torchjd", "torchjd.autojac")):
            try:
                importlib.import_module(module)
            except Exception as exc:
                anchor_error[library] = f"import failed: {describe(exc)}"
    else:
        anchor_error = {"libmtl": install_error, "torchjd": install_error}
    used = {
        library: [a for a in table if a.weighting in registered]
        for library, table in (("libmtl", anchors.LIBMTL), ("torchjd", anchors.TORCHJD))
    }
    versions = anchors.versions()
    log.info("anchors: %s%s", versions, f"; unavailable: {anchor_error}" if anchor_error else "")

    records: list[Record] = []
    results: dict[str, Timings] = {}
    comparisons: dict[tuple[str, str], float] = {}
    all_labels: list[str] = []
    loads: list[tuple[str, float, float]] = []
    setups = make_setups(seeds)
    for setup in setups:
        if quick:
            setup.rounds = setup.rounds[:2]
        timings = Timings()
        runners: dict[str, Step] = {}
        for name, on in variants:
            try:
                runners[label_of(name, on)] = crosstask_step(setup, name, on)
            except Exception as exc:
                timings.failed[label_of(name, on)] = describe(exc)
        runners["plain:equal"] = plain_step(setup)
        for library, table in used.items():
            if library in anchor_error:
                continue
            build = anchors.libmtl_step if library == "libmtl" else anchors.torchjd_step
            for anchor in table:
                try:
                    runners[anchor.label] = build(anchor, setup.problem())
                except Exception as exc:
                    timings.failed[anchor.label] = describe(exc)
        started, load = time.perf_counter(), os.getloadavg()[0]
        measure(setup, runners, timings, block_s)
        loads.append((setup.name, load, os.getloadavg()[0]))
        log.info(
            "%s: %.0f s; load average %.1f -> %.1f", setup.name, time.perf_counter() - started, *loads[-1][1:]
        )
        results[setup.name] = timings

        labels = [*crosstask_labels, "plain:equal"]
        for label in labels:
            records.append(runner_record(setup, label, timings, is_anchor=False))
        for name, why in broken.items():
            records.append(failed_record(setup, name, f"failed: weighting module did not import: {why}"))
        for library, table in used.items():
            for anchor in table:
                if library in anchor_error:
                    records.append(failed_record(setup, anchor.label, f"missing: {anchor_error[library]}"))
                else:
                    records.append(runner_record(setup, anchor.label, timings, is_anchor=True))
            labels += [a.label for a in table]
            if library not in anchor_error:
                records.append(summary_record(setup, library, table, crosstask_labels, timings, comparisons))
        all_labels = list(dict.fromkeys([*all_labels, *labels]))

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("mtl_speed_scaling.quick.md" if quick else "mtl_speed_scaling.md")
    path.write_text(scaling_markdown(setups, results, all_labels, comparisons, quick, loads))
    log.info("wrote %s", path)
    return records
