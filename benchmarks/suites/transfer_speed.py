"""Speed of domain adaptation: a DANN and a CDAN training step in crosstask against the same step in a plain
hand-written PyTorch loop (time ratio), and the peak memory of each.

Same LeNet (MNIST→USPS inputs, 28×28), same domain discriminator (two hidden layers of 1024 with batch
normalization), same source and target batches (128 each, one joint forward pass), SGD with momentum.
crosstask runs ``ct.fit(model, method=..., source=mnist, target=usps)`` (the whole Trainer: streams,
logging, the weighting); the plain loop indexes in-memory tensors. Runs alternate in one process (ABBA);
the ratio is per round. CDAN is timed without its entropy weighting (CDAN, not CDAN+E) on both sides. Peak memory: the resident memory a fresh process adds while it runs only that loop,
after loading the data (sampled every 2 ms).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

import crosstask as ct
from benchmarks.records import Record
from crosstask.data.datasets.base import load_dataset
from crosstask.modules.discriminator import DomainDiscriminator
from crosstask.modules.grl import reverse_gradient, warm_up

SEEDS = [0, 1, 2, 3]
BATCH = 128
log = logging.getLogger(__name__)


def model() -> ct.MultiTaskModel:
    return ct.TransferModel("lenet", [ct.Task("digit", num_classes=10)], input_shape=(1, 28, 28))


def multilinear(features: torch.Tensor, probabilities: torch.Tensor, projections) -> torch.Tensor:
    """CDAN's conditioning: the outer product f ⊗ g, or its randomized version when it would be too wide."""
    if projections is None:
        return torch.bmm(probabilities.unsqueeze(2), features.unsqueeze(1)).flatten(1)
    rf, rg = projections
    return (features @ rf) * (probabilities @ rg) / rf.shape[1] ** 0.5


def plain_loop(method: str, data: dict, steps: int, seed: int) -> float:
    """A hand-written DANN / CDAN training loop; returns seconds."""
    torch.manual_seed(seed)
    net = model()
    width = net.architecture.out_features("digit")
    projections = None
    if method == "cdan":
        if width * 10 > 4096:
            projections = (torch.randn(width, 1024), torch.randn(10, 1024))
            width = 1024
        else:
            width = width * 10
    discriminator = DomainDiscriminator(width)
    params = [*net.parameters(), *discriminator.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    xs, ys, xt = data["xs"], data["ys"], data["xt"]
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(steps):
        i = torch.randint(len(xs), (BATCH,), generator=generator)
        j = torch.randint(len(xt), (BATCH,), generator=generator)
        output = net.forward_all(torch.cat([xs[i], xt[j]]))
        logits, features = output.outputs["digit"], output.shared
        loss = F.cross_entropy(logits[:BATCH], ys[i])
        coefficient = warm_up(step / steps)
        if method == "cdan":
            features = multilinear(features, torch.softmax(logits, 1).detach(), projections)
        domain = discriminator(reverse_gradient(features, coefficient))
        labels = torch.cat([torch.ones(BATCH), torch.zeros(BATCH)])
        loss = loss + F.binary_cross_entropy_with_logits(domain, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


# like for like with the plain loops: CDAN without the entropy weighting (CDAN, not CDAN+E)
METHODS = {"dann": {"name": "dann"}, "cdan": {"name": "cdan", "entropy": False}}


def crosstask_loop(method: str, source, target, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    result = ct.fit(
        model(),
        method=METHODS[method],
        source=source,
        target=target,
        steps=steps,
        batch_size=BATCH,
        optim={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        seed=seed,
        output_dir="runs/benchmarks/transfer_speed",
        name=f"{method}_{seed}",
        log_every=100,
        device="cpu",
        progress=None,
    )
    return result.summary["elapsed_s"]


def load() -> tuple[dict, object, object]:
    source = load_dataset({"name": "mnist", "split": "train"})
    target = load_dataset({"name": "usps", "split": "train"})
    return {"xs": source.x, "ys": source.y, "xt": target.x}, source, target


def resident_mb() -> float:
    """The current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training_memory_mb(which: str, method: str, steps: int) -> float:
    """Peak resident memory added by training (MB): in this process, after the data is loaded, sampled every
    2 ms while the loop runs."""
    data, source, target = load()
    gc.collect()
    baseline, peak, running = resident_mb(), [0.0], [True]

    def sample() -> None:
        while running[0]:
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        if which == "plain":
            plain_loop(method, data, steps, 0)
        else:
            crosstask_loop(method, source, target, steps, 0)
    finally:
        running[0] = False
        sampler.join()
    return peak[0] - baseline


def peak_memory_mb(which: str, method: str, steps: int) -> float:
    """:func:`training_memory_mb` in a fresh process, so that one loop's allocations do not hide the other's."""
    code = (
        "from benchmarks.suites import transfer_speed as t; "
        f"print(t.training_memory_mb('{which}', '{method}', {steps}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def run(options: dict) -> list[Record]:
    steps = 30 if options["quick"] else 200
    seeds = options["seeds"]
    data, source, target = load()
    records: list[Record] = []
    for method in options.get("methods") or ["dann", "cdan"]:
        plain_loop(method, data, 5, 0)  # warm-up
        times: dict[str, list[float]] = {"crosstask": [], "plain": []}
        runners = {
            "crosstask": lambda seed, m=method: crosstask_loop(m, source, target, steps, seed),
            "plain": lambda seed, m=method: plain_loop(m, data, steps, seed),
        }
        for round_, seed in enumerate(seeds):
            order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
            for name in order:
                times[name].append(runners[name](seed))
            log.info("%s round %d: %s", method, seed, {k: round(v[-1], 3) for k, v in times.items()})
        ratios = [c / p for c, p in zip(times["crosstask"], times["plain"], strict=True)]
        note = f"LeNet, MNIST→USPS batches {BATCH}+{BATCH}, {steps} steps per run, alternating in one process"
        memory = {which: peak_memory_mb(which, method, 20) for which in ("crosstask", "plain")}
        records += [
            Record.measured(
                "transfer_speed", method, "time ratio crosstask / plain loop", ratios, seeds, False, note
            ),
            Record.measured(
                "transfer_speed",
                method,
                "crosstask ms per step",
                [1000 * t / steps for t in times["crosstask"]],
                seeds,
                False,
            ),
            Record.measured(
                "transfer_speed",
                method,
                "plain loop ms per step",
                [1000 * t / steps for t in times["plain"]],
                seeds,
                False,
            ),
            Record.measured(
                "transfer_speed",
                method,
                "peak memory ratio crosstask / plain loop",
                [memory["crosstask"] / memory["plain"]],
                [0],
                False,
                f"peak resident memory added by 20 training steps in a fresh process (after loading the data): "
                f"crosstask {memory['crosstask']:.0f} MB, plain {memory['plain']:.0f} MB",
            ),
        ]
        log.info("%s: %s", method, json.dumps({"ratio": statistics.median(ratios), **memory}))
    return records
