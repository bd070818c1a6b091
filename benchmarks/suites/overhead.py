"""Engine overhead: the same LeNet, MNIST batches and number of steps trained by crosstask and by a plain
hand-written PyTorch loop, in one process, alternating runs. The record is the time ratio (target ≤ 1.05).

The plain loop is the fastest honest one: in-memory tensors indexed by a per-epoch permutation (no
DataLoader), SGD with momentum, ``zero_grad``/``backward``/``step``. A second plain loop with a standard
``DataLoader(TensorDataset, shuffle=True)`` is timed too, as what a typical script does.
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import crosstask as ct
from benchmarks.records import Record
from crosstask.data.datasets.base import load_dataset

SEEDS = [0, 1, 2, 3, 4, 5, 6, 7]  # one round per seed; the order alternates (ABBA) against drift
BATCH = 64
log = logging.getLogger(__name__)


def model() -> ct.MultiTaskModel:
    return ct.TransferModel("lenet", [ct.Task("digit", num_classes=10)], input_shape=(1, 28, 28))


def plain_loop(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(x) // BATCH
    started = time.perf_counter()
    net.train()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x), generator=generator)
        index = order[(step % per_epoch) * BATCH : (step % per_epoch + 1) * BATCH]
        loss = F.cross_entropy(net(x[index])["digit"], y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def dataloader_loop(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> float:
    torch.manual_seed(seed)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, drop_last=True)
    started = time.perf_counter()
    net.train()
    done = 0
    while done < steps:
        for xb, yb in loader:
            loss = F.cross_entropy(net(xb)["digit"], yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return time.perf_counter() - started


def crosstask_loop(dataset: ct.ArrayDataset, steps: int, seed: int, output_dir: str) -> float:
    torch.manual_seed(seed)
    net = model()
    result = ct.fit(
        net,
        data=dataset,
        steps=steps,
        batch_size=BATCH,
        optim={"name": "sgd", "lr": 0.01, "momentum": 0.9},
        seed=seed,
        output_dir=output_dir,
        name=f"overhead_{seed}",
        log_every=100,
        device="cpu",
    )
    return result.summary["elapsed_s"]


def run(options: dict) -> list[Record]:
    steps = 100 if options["quick"] else 600
    train = load_dataset({"name": "mnist", "split": "train"})
    x, y = train.x, train.y
    times: dict[str, list[float]] = {"crosstask": [], "plain": [], "dataloader": []}
    plain_loop(x, y, 20, 0)  # warm-up
    runners = {
        "crosstask": lambda seed: crosstask_loop(train, steps, seed, "runs/benchmarks/overhead"),
        "plain": lambda seed: plain_loop(x, y, steps, seed),
        "dataloader": lambda seed: dataloader_loop(x, y, steps, seed),
    }
    for round_, seed in enumerate(options["seeds"]):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for name in order:
            times[name].append(runners[name](seed))
        log.info("round %d: %s", seed, {k: round(v[-1], 3) for k, v in times.items()})
    ratios = [c / p for c, p in zip(times["crosstask"], times["plain"], strict=True)]
    ratio_dl = [c / p for c, p in zip(times["crosstask"], times["dataloader"], strict=True)]
    seeds = options["seeds"]
    per_step = {k: [1000 * t / steps for t in v] for k, v in times.items()}
    note = f"LeNet, MNIST, batch {BATCH}, {steps} steps per run, runs alternate in one process"
    return [
        Record.measured(
            "overhead", "crosstask_vs_plain_loop", "time ratio (target <= 1.05)", ratios, seeds, False, note
        ),
        Record.measured(
            "overhead", "crosstask_vs_dataloader_loop", "time ratio", ratio_dl, seeds, False, note
        ),
        Record.measured("overhead", "crosstask", "ms per step", per_step["crosstask"], seeds, False),
        Record.measured("overhead", "plain_loop", "ms per step", per_step["plain"], seeds, False),
        Record.measured("overhead", "dataloader_loop", "ms per step", per_step["dataloader"], seeds, False),
        Record.measured(
            "overhead",
            "crosstask_vs_plain_loop",
            "median time ratio",
            [statistics.median(ratios)],
            seeds,
            False,
        ),
    ]
