"""Runtime setup of a run: the device, the seeds, deterministic kernels, the CPU threads."""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from crosstask.errors import ConfigError

log = logging.getLogger(__name__)

# Intra-op threads only pay off when each operation is large: a small model's step is a few hundred
# microseconds, less than the threads' synchronisation, and with other processes on the same cores
# every extra thread spins waiting for the slowest (crosstask demo: 33 s at 2 threads, 19 s at 1).
SMALL_MODEL = 1_000_000  # parameters below which one thread is fastest
SMALL_BATCH = 16_384  # input elements per batch (batch_size x sample size) below which one thread is fastest
WORK_PER_THREAD = 10**10  # parameters x batch elements that keep one more thread busy


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _own_load() -> float:
    """This process's expected share of the 1-minute load average: its CPU use since it started, weighted by
    how much of the last minute it has existed (the load average is an exponential average over a minute)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = max(1e-3, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 1.0  # unknown: assume this process is running and counted
    return min(1.0, time.process_time() / age) * (1.0 - math.exp(-age / 60.0))


def free_cores(load: float | None = None, cores: int | None = None) -> int:
    """The cores not busy with other processes: ``cores`` (default: :func:`available_cores`) less the
    1-minute load average (default: ``os.getloadavg()``) that other processes put on them; at least 1."""
    cores = available_cores() if cores is None else max(1, cores)
    if load is None:
        try:
            load = os.getloadavg()[0] - _own_load()
        except (AttributeError, OSError):  # no load average on this platform
            return cores
        total = os.cpu_count() or cores
        if total > cores:  # the load is spread over every CPU; count the share of ours
            load *= cores / total
    busy = max(0, math.ceil(load - 0.25))  # a process busy over a quarter of the time takes a core
    return max(1, min(cores, cores - busy))


def choose_threads(requested: int | None, parameters: int, batch_elements: int) -> int:
    """The intra-op threads to train with on the CPU.

    ``requested`` (``train.threads``) wins. Otherwise small models (under ``SMALL_MODEL`` parameters) and
    small batches (under ``SMALL_BATCH`` input elements: ``batch_size`` x the elements of one sample) get
    one thread; larger ones one thread per ``WORK_PER_THREAD`` of ``parameters x batch_elements``, at least
    2, and never more than the free cores (:func:`free_cores`).
    """
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"train.threads must be at least 1, got {requested}")
        return int(requested)
    if parameters < SMALL_MODEL or batch_elements < SMALL_BATCH:
        return 1
    wanted = max(2, parameters * batch_elements // WORK_PER_THREAD)
    return max(1, min(wanted, free_cores()))


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous number is restored after."""
    if n < 1:
        raise ConfigError(f"the number of threads must be at least 1, got {n}")
    previous = torch.get_num_threads()
    if n != previous:
        torch.set_num_threads(n)
    log.debug("intra-op threads: %d (was %d)", n, previous)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an explicit device must exist here."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but no CUDA device is available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"train.device is '{name}' but this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    if device.type == "mps" and not mps:
        raise ConfigError(f"train.device is '{name}' but MPS is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and random."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Deterministic kernels while training when ``enabled``; the previous setting is restored after."""
    previous = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = benchmark
