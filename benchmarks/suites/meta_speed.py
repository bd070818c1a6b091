"""Speed and memory of meta-learning: seconds per meta-step and peak memory of crosstask's second-order MAML
and ProtoNet, against learn2learn 0.2.0's MAML and plain hand-written loops, on the identical model, data
and seed, in one process.

Setting: the conv-4 of the few-shot literature (64 filters, batch norm on each batch's own statistics,
ReLU, max-pool; crosstask's ``conv4``), 1×28×28 Omniglot background images (synthetic images of the same
shape when the dataset is missing), 5-way 1-shot episodes with 5 queries per class, meta-batch 16, 5 inner
steps of 0.4, second order, float32, one thread. A meta-step is the meta-batch's losses and the
meta-gradient in ``.grad`` (no optimizer update: every step starts from the same weights, so the
meta-gradients of the implementations can be compared). Implementations:

- ``crosstask maml``: the MAML method's training step (``vectorize: auto``, which is the episode loop on
  CPU), objectives summed as the equal weighting does; ``crosstask maml vmap``: the same with
  ``vectorize: true``;
- ``plain loop maml``: a hand-written loop, ``torch.autograd.grad(create_graph=True)`` +
  ``torch.func.functional_call``, one backward pass of the mean query loss (what crosstask did before);
- ``learn2learn maml``: ``l2l.algorithms.MAML(model, lr)``, per episode ``clone()``, ``adapt()`` 5 times,
  then ``(query loss / T).backward()``, as in learn2learn's examples (one episode's graph at a time);
- ``crosstask protonet`` and ``plain protonet`` (one forward pass of support and query per episode,
  prototypes, negative squared distances).

Timing: rounds (one per seed: the seed picks the episodes) of ``steps`` meta-steps per implementation,
implementations alternating (the order reversed every other round); a round's value is its median step,
after warm-up steps. Peak memory: the resident set size (Linux ``/proc/self/statm``, sampled every 2 ms by
a thread) that a fresh process adds over its size after loading the data and building everything, during
two meta-steps (peak RSS delta; not tracemalloc, which does not see PyTorch's allocations). Gradient
agreement: max |difference| of the meta-gradients on the same meta-batch (float32 at the benchmark's size,
and float64 on a 2-episode meta-batch).

learn2learn is not a dependency: without it the suite records crosstask's and the plain loops' numbers and
says that learn2learn was not importable. Build recipe (Python 3.11; its shipped Cython output does not
compile): ``pip download learn2learn==0.2.0 --no-deps --no-binary learn2learn``, unpack, ``pip install
--target /tmp/l2l/tools cython``, ``PYTHONPATH=/tmp/l2l/tools python setup.py build_ext --inplace``,
``PYTHONPATH=/tmp/l2l/tools pip install --no-build-isolation --no-deps --target /tmp/l2l/site .``, ``pip
install --no-deps --target /tmp/l2l/site requests gym gym_notices charset_normalizer idna urllib3 certifi``,
then run with ``PYTHONPATH=src:.:/tmp/l2l/site``.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

import crosstask as ct
from benchmarks.records import Record
from crosstask.data.datasets.base import load_dataset
from crosstask.data.episodes import EpisodeConfig, Episodes, EpisodeSampler
from crosstask.engine.method import StreamSpec
from crosstask.errors import CrosstaskError
from crosstask.evaluation.episodes import prototype_logits
from crosstask.methods.meta_learning import MetaLearner
from crosstask.registry import METHODS

SEEDS = [0, 1, 2, 3, 4]  # one timing round per seed
BENCHMARK = "meta_speed/omniglot_conv4_5way1shot"
WAYS, SHOTS, QUERIES, INNER_LR = 5, 1, 5, 0.4
ANCHOR = (
    "ANCHORS.md measured learn2learn ≈ 6.0 s and a plain loop ≈ 5.8 s per meta-step at this setting on a "
    "partly busy machine"
)
log = logging.getLogger(__name__)


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"tasks": 4, "inner_steps": 2, "steps": 1, "warmup": 1}
    return {"tasks": 16, "inner_steps": 5, "steps": 3, "warmup": 1}


# ----------------------------------------------------------------------------- data and models


def sampler(tasks: int) -> tuple[EpisodeSampler | None, str]:
    """Omniglot's background episodes, or None (synthetic images) when the dataset is not there."""
    config = EpisodeConfig(ways=WAYS, shots=SHOTS, queries=QUERIES, tasks=tasks)
    try:
        data = load_dataset({"name": "omniglot", "part": "background"})
        return EpisodeSampler(data, config, "character", "background", seed=0), "Omniglot background"
    except (CrosstaskError, OSError) as exc:
        log.warning("omniglot is not available (%s): synthetic 1x28x28 images", exc)
        return None, "synthetic images"


def draw(source: EpisodeSampler | None, tasks: int, index: int) -> Episodes:
    if source is not None:
        return source.draw(index * tasks, tasks)
    g = torch.Generator().manual_seed(index)
    labels = torch.arange(WAYS)
    return Episodes(
        torch.randn(tasks, WAYS * SHOTS, 1, 28, 28, generator=g),
        labels.repeat_interleave(SHOTS).repeat(tasks, 1),
        torch.randn(tasks, WAYS * QUERIES, 1, 28, 28, generator=g),
        labels.repeat_interleave(QUERIES).repeat(tasks, 1),
        WAYS,
    )


def model(dtype: torch.dtype = torch.float32) -> ct.MultiTaskModel:
    torch.manual_seed(0)
    net = ct.MultiTaskModel({"name": "conv4"}, [ct.Task("y", num_classes=WAYS)], input_shape=(1, 28, 28))
    return net.to(dtype)


def method(name: str, net: ct.MultiTaskModel, tasks: int, **options: Any) -> MetaLearner:
    entry = METHODS.get(name)
    spec = StreamSpec(
        "train", True, ("y",), EpisodeConfig(ways=WAYS, shots=SHOTS, queries=QUERIES, tasks=tasks)
    )
    return entry.obj(entry.config(name=name, **options), net, [spec])


def learn2learn() -> tuple[Any, str | None]:
    try:
        import learn2learn as l2l
    except Exception as exc:  # ImportError, or its own imports (gym, ...) failing
        return None, f"learn2learn was not importable ({type(exc).__name__}: {exc})"
    return l2l, None


# ----------------------------------------------------------------------------- one meta-step each


Step = Callable[[Episodes], None]


def crosstask_step(learner: MetaLearner) -> Step:
    def step(episodes: Episodes) -> None:
        learner.model.zero_grad(set_to_none=True)
        output = learner.training_step({"train": episodes})
        torch.stack(list(output.objectives.values())).sum().backward()

    return step


def plain_maml_step(net: ct.MultiTaskModel, inner_steps: int) -> Step:
    params = dict(net.named_parameters())

    def logits(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, p, (x,))["y"]

    def step(episodes: Episodes) -> None:
        net.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(len(episodes)):
            xs, ys, xq, yq = episodes.episode(i)
            fast = dict(params)
            for _ in range(inner_steps):
                names = list(fast)
                grads = torch.autograd.grad(
                    F.cross_entropy(logits(fast, xs), ys), [fast[n] for n in names], create_graph=True
                )
                fast = {n: fast[n] - INNER_LR * g for n, g in zip(names, grads, strict=True)}
            total = total + F.cross_entropy(logits(fast, xq), yq)
        (total / len(episodes)).backward()

    return step


def l2l_maml_step(l2l: Any, net: ct.MultiTaskModel, inner_steps: int) -> tuple[Step, torch.nn.Module]:
    maml = l2l.algorithms.MAML(net, lr=INNER_LR, first_order=False)

    def step(episodes: Episodes) -> None:
        maml.zero_grad(set_to_none=True)
        count = len(episodes)
        for i in range(count):
            xs, ys, xq, yq = episodes.episode(i)
            learner = maml.clone()
            for _ in range(inner_steps):
                learner.adapt(F.cross_entropy(learner(xs)["y"], ys))
            (F.cross_entropy(learner(xq)["y"], yq) / count).backward()

    return step, maml.module


def plain_protonet_step(net: ct.MultiTaskModel) -> Step:
    def step(episodes: Episodes) -> None:
        net.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(len(episodes)):
            xs, ys, xq, yq = episodes.episode(i)
            z = net.forward_all(torch.cat([xs, xq])).shared.flatten(1)
            n = len(xs)
            total = total + F.cross_entropy(prototype_logits(z[:n], ys, z[n:], episodes.ways), yq)
        (total / len(episodes)).backward()

    return step


def runners(
    tasks: int, inner_steps: int, which: list[str], dtype: torch.dtype = torch.float32
) -> dict[str, tuple[Step, torch.nn.Module]]:
    """Every implementation with its own copy of the same initial model (the one whose ``.grad`` it fills)."""
    out: dict[str, tuple[Step, torch.nn.Module]] = {}
    if "maml" in which:
        options = {"inner_steps": inner_steps, "inner_lr": INNER_LR}
        net = model(dtype)
        out["crosstask maml"] = crosstask_step(method("maml", net, tasks, **options)), net
        net = model(dtype)
        out["crosstask maml vmap"] = (
            crosstask_step(method("maml", net, tasks, vectorize=True, **options)),
            net,
        )
        net = model(dtype)
        out["plain loop maml"] = plain_maml_step(net, inner_steps), net
        l2l, _ = learn2learn()
        if l2l is not None:
            out["learn2learn maml"] = l2l_maml_step(l2l, model(dtype), inner_steps)
    if "protonet" in which:
        net = model(dtype)
        out["crosstask protonet"] = crosstask_step(method("protonet", net, tasks)), net
        net = model(dtype)
        out["plain protonet"] = plain_protonet_step(net), net
    return out


def gradient(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in net.named_parameters() if p.grad is not None}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Max |a − b| over every parameter, and the largest |entry| of ``a`` (for scale)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((a[n] - b[n]).abs().max()) for n in a), max(float(a[n].abs().max()) for n in a)


# ----------------------------------------------------------------------------- memory in a fresh process


def resident_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_mb(name: str, tasks: int, inner_steps: int) -> float:
    """Peak resident memory (MB) that two meta-steps of ``name`` add, in this process, over its size after
    loading the data and building the model (sampled every 2 ms)."""
    torch.set_num_threads(1)
    source, _ = sampler(tasks)
    episodes = draw(source, tasks, 0)
    which = ["protonet"] if "protonet" in name else ["maml"]
    step, _ = runners(tasks, inner_steps, which)[name]
    baseline, peak, running = resident_mb(), [0.0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.002)

    sampler_thread = threading.Thread(target=sample, daemon=True)
    sampler_thread.start()
    try:
        for _ in range(2):
            step(episodes)
    finally:
        running[0] = False
        sampler_thread.join()
    return max(peak[0], resident_mb()) - baseline


def peak_memory_mb(name: str, tasks: int, inner_steps: int) -> float:
    code = (
        f"from benchmarks.suites import meta_speed as m; print(m.memory_mb({name!r}, {tasks}, {inner_steps}))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the suite


def agreement(
    tasks: int, inner_steps: int, source: EpisodeSampler | None, dtype: torch.dtype
) -> dict[str, tuple[float, float]]:
    """Max |difference| of every MAML implementation's meta-gradient from crosstask's, on one meta-batch."""
    episodes = draw(source, tasks, 10_000)
    if dtype == torch.float64:
        episodes = Episodes(
            episodes.support.double(), episodes.support_y, episodes.query.double(), episodes.query_y, WAYS
        )
    grads = {}
    for name, (step, net) in runners(tasks, inner_steps, ["maml"], dtype).items():
        step(episodes)
        grads[name] = gradient(net)
    ours = grads.pop("crosstask maml")
    return {name: max_difference(ours, g) for name, g in grads.items()}


def run(options: dict) -> list[Record]:
    size = sizes(options["quick"])
    tasks, inner_steps, steps = size["tasks"], size["inner_steps"], size["steps"]
    which = [m for m in (options.get("methods") or ["maml", "protonet"]) if m in ("maml", "protonet")]
    seeds = options["seeds"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return measure(tasks, inner_steps, steps, size["warmup"], which, seeds)
    finally:
        torch.set_num_threads(threads)


def measure(
    tasks: int, inner_steps: int, steps: int, warmup: int, which: list[str], seeds: list[int]
) -> list[Record]:
    source, data_name = sampler(tasks)
    _, missing = learn2learn()
    shared = (
        f"conv-4 (64 filters, batch statistics), {data_name} 1x28x28, {WAYS}-way {SHOTS}-shot {QUERIES} queries, "
        f"meta-batch {tasks}"
    )
    setting = f"{shared}, {inner_steps} inner steps of {INNER_LR}, second order, float32, 1 thread"
    settings = {"maml": setting, "protonet": f"{shared}, float32, 1 thread"}
    implementations = runners(tasks, inner_steps, which)
    for step, _ in implementations.values():  # warm-up
        for _ in range(warmup):
            step(draw(source, tasks, 999))
    times: dict[str, list[float]] = {name: [] for name in implementations}
    for round_, seed in enumerate(seeds):
        order = list(implementations) if round_ % 2 == 0 else list(reversed(implementations))
        batches = [draw(source, tasks, seed * steps + k) for k in range(steps)]
        for name in order:
            step, _ = implementations[name]
            per_step = []
            for episodes in batches:
                started = time.perf_counter()
                step(episodes)
                per_step.append(time.perf_counter() - started)
            times[name].append(statistics.median(per_step))
        log.info("round %d: %s", seed, {k: round(v[-1], 3) for k, v in times.items()})
    del implementations

    records: list[Record] = []
    timing = f"median of {steps} meta-steps per round, implementations alternating in one process"
    for name, values in times.items():
        note = f"{settings['protonet' if 'protonet' in name else 'maml']}; {timing}"
        said = f"{note}; {missing}" if missing and name == "crosstask maml" else note
        records.append(Record.measured(BENCHMARK, name, "s per meta-step", values, seeds, False, said))
    if "maml" in which:
        ours = times["crosstask maml"]
        for other in ("learn2learn maml", "plain loop maml", "crosstask maml vmap"):
            if other in times:
                ratios = [o / c for o, c in zip(times[other], ours, strict=True)]
                extra = f"; {ANCHOR}" if other == "learn2learn maml" else ""
                records.append(
                    Record.measured(
                        BENCHMARK,
                        "crosstask maml",
                        f"speedup over {other} (its s / ours, per round; goal >= 1.5 vs learn2learn)"
                        if other == "learn2learn maml"
                        else f"speedup over {other} (its s / ours, per round)",
                        ratios,
                        seeds,
                        True,
                        f"{setting}{extra}",
                    )
                )
    if "protonet" in which:
        ratios = [p / c for p, c in zip(times["plain protonet"], times["crosstask protonet"], strict=True)]
        records.append(
            Record.measured(
                BENCHMARK,
                "crosstask protonet",
                "speedup over plain protonet (its s / ours)",
                ratios,
                seeds,
                True,
                settings["protonet"],
            )
        )

    # peak memory, each implementation in a fresh process
    names = [n for n in times if n != "learn2learn maml" or not missing]
    memory = {name: peak_memory_mb(name, tasks, inner_steps) for name in names}
    for name, mb in memory.items():
        records.append(
            Record.measured(
                BENCHMARK,
                name,
                "peak memory MB",
                [mb],
                [0],
                False,
                "peak resident set size added by 2 meta-steps in a fresh process over its size after loading the "
                "data and building the model (/proc/self/statm sampled every 2 ms)",
            )
        )

    if "learn2learn maml" in memory:
        records.append(
            Record.measured(
                BENCHMARK,
                "crosstask maml",
                "peak memory ratio crosstask / learn2learn maml",
                [memory["crosstask maml"] / memory["learn2learn maml"]],
                [0],
                False,
                f"crosstask {memory['crosstask maml']:.0f} MB, learn2learn {memory['learn2learn maml']:.0f} MB",
            )
        )

    if "maml" in which:  # the meta-gradients agree
        for dtype, count in ((torch.float32, tasks), (torch.float64, 2)):
            for other, (diff, scale) in agreement(count, inner_steps, source, dtype).items():
                records.append(
                    Record.measured(
                        BENCHMARK,
                        "crosstask maml",
                        f"meta-gradient max abs difference vs {other} ({str(dtype).removeprefix('torch.')})",
                        [diff],
                        [0],
                        False,
                        f"max |difference| {diff:.3g}, largest |entry| of crosstask's meta-gradient {scale:.3g} "
                        f"(meta-batch {count}, {inner_steps} inner steps)",
                    )
                )
    return records
