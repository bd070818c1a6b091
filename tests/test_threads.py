"""CPU threads: choose_threads (requested, model size, free cores) and the threads() context manager."""

from __future__ import annotations

import os

import pytest
import torch

from crosstask.errors import ConfigError
from crosstask.experiment import runtime
from crosstask.experiment.runtime import choose_threads, free_cores, threads

LARGE = {"parameters": 11_000_000, "batch_elements": 64 * 3 * 32 * 32}  # resnet18, 64 CIFAR images


def machine(monkeypatch: pytest.MonkeyPatch, cores: int, load: float, own: float = 0.0) -> None:
    """Pretend to run on ``cores`` cores under a 1-minute load average ``load`` (``own`` of it ours)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load), raising=False)
    monkeypatch.setattr(runtime, "_own_load", lambda: own)


def test_the_conftest_pins_one_thread() -> None:
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"


def test_requested_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=2, load=8.0)
    assert choose_threads(6, parameters=1000, batch_elements=10) == 6
    assert choose_threads(1, **LARGE) == 1
    with pytest.raises(ConfigError, match="at least 1"):
        choose_threads(0, **LARGE)


def test_small_models_and_small_batches_get_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=64, load=0.0)
    demo_mlp = 64 * 128 + 128 * 64 + 64 * 10  # crosstask demo: mlp [128, 64] on 8x8 digits, batch 64
    assert choose_threads(None, parameters=demo_mlp, batch_elements=64 * 64) == 1
    assert choose_threads(None, parameters=431_080, batch_elements=64 * 784) == 1  # lenet on MNIST
    assert (
        choose_threads(None, parameters=11_000_000, batch_elements=8 * 64) == 1
    )  # a large model, tiny batch


def test_large_models_use_the_free_cores_and_never_more(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=2, load=0.0)
    assert choose_threads(None, **LARGE) == 2
    machine(monkeypatch, cores=8, load=0.0)
    assert choose_threads(None, **LARGE) == 8
    huge = {"parameters": 25_000_000, "batch_elements": 256 * 3 * 224 * 224}
    for cores in (1, 2, 4, 16):
        machine(monkeypatch, cores=cores, load=0.0)
        assert 1 <= choose_threads(None, **huge) <= cores
    # a model just past the thresholds wants two threads, not every core
    machine(monkeypatch, cores=64, load=0.0)
    assert choose_threads(None, parameters=1_000_000, batch_elements=16_384) == 2


def test_a_busy_machine_gets_fewer_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    machine(monkeypatch, cores=8, load=0.0)
    idle = choose_threads(None, **LARGE)
    machine(monkeypatch, cores=8, load=5.0)
    busy = choose_threads(None, **LARGE)
    assert busy < idle and busy == 3
    machine(monkeypatch, cores=2, load=2.0)  # two busy processes on two cores
    assert choose_threads(None, **LARGE) == 1
    machine(monkeypatch, cores=2, load=7.5)
    assert choose_threads(None, **LARGE) == 1
    # this process's own share of the load is not counted against it
    machine(monkeypatch, cores=2, load=1.0, own=1.0)
    assert choose_threads(None, **LARGE) == 2


def test_free_cores() -> None:
    assert free_cores(load=0.0, cores=4) == 4
    assert free_cores(load=1.0, cores=4) == 3
    assert free_cores(load=1.2, cores=4) == 3  # a little noise does not take a core
    assert free_cores(load=1.5, cores=4) == 2
    assert free_cores(load=40.0, cores=4) == 1  # always at least one
    assert 1 <= free_cores() <= runtime.available_cores()


def test_free_cores_counts_the_share_of_our_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 of 16 CPUs are ours; a load of 8 spread over 16 puts 2 on ours
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 8.0, 8.0), raising=False)
    monkeypatch.setattr(runtime, "_own_load", lambda: 0.0)
    assert free_cores() == 2


def test_without_a_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    monkeypatch.setattr(os, "getloadavg", unavailable, raising=False)
    assert free_cores() == 4


def test_own_load_is_a_fraction() -> None:
    assert 0.0 <= runtime._own_load() <= 1.0


def test_threads_sets_and_restores() -> None:
    before = torch.get_num_threads()
    with threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), threads(3):
        assert torch.get_num_threads() == 3
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError), threads(0):
        pass
