"""Fewer intra-op threads when other processes keep the cores busy (issue 26, target 5): the decision
with mocked inputs (no real load, no timing), the explicit choices it leaves alone, and the context
manager that applies it around long CPU jobs."""
import logging

import pytest
import torch

from efficient_tagging import hardware
from efficient_tagging.hardware import THREADS_ENV, contended_threads, threads_for_cpu_work


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (0.4, 2), (1.0, 1), (1.6, 1), (2.0, 1)])
def test_two_cores_less_the_busy_ones(busy, expected):
    threads, reason = contended_threads(cores=2, busy=busy, current=2, environ={})
    assert threads == expected
    assert "2 cores" in reason and f"~{busy:.1f} busy" in reason
    assert f"{expected} intra-op thread" in reason
    assert ("instead of 2" in reason) == (expected < 2)


def test_many_cores_and_a_lower_count_the_user_chose():
    assert contended_threads(cores=16, busy=5.0, current=16, environ={})[0] == 11
    # never more threads than are in force (e.g. the tests' torch.set_num_threads(1))
    assert contended_threads(cores=16, busy=0.0, current=4, environ={})[0] == 4
    assert contended_threads(cores=16, busy=14.0, current=4, environ={})[0] == 2


def test_one_thread_is_not_measured(monkeypatch):
    monkeypatch.setattr(hardware, "busy_cores_of_others", lambda *a: pytest.fail("measured"))
    threads, reason = contended_threads(cores=2, current=1, environ={})
    assert threads == 1 and "1 intra-op thread" in reason


def test_measured_busy_cores_are_used(monkeypatch):
    monkeypatch.setattr(hardware, "busy_cores_of_others", lambda *a: (1.9, "/proc/stat over 0.3 s"))
    threads, reason = contended_threads(cores=2, current=2, environ={})
    assert threads == 1
    assert reason.startswith("2 cores, ~1.9 busy with other processes (/proc/stat over 0.3 s): 1 intra-op thread")


def test_environment_variable_forces_a_count():
    threads, reason = contended_threads(cores=2, busy=2.0, current=2, environ={THREADS_ENV: "2"})
    assert threads == 2 and f"{THREADS_ENV}=2" in reason
    assert contended_threads(cores=2, busy=0.0, current=2, environ={THREADS_ENV: "3"})[0] == 3
    assert contended_threads(cores=2, busy=2.0, current=2, environ={THREADS_ENV: "auto"})[0] == 1
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=THREADS_ENV):
            contended_threads(cores=2, busy=0.0, current=2, environ={THREADS_ENV: bad})


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_thread_variables_of_the_user_are_kept(name):
    threads, reason = contended_threads(cores=2, busy=2.0, current=2, environ={name: "2"})
    assert threads == 2 and f"{name}=2" in reason and "keeping 2" in reason


def test_pinned_count_is_kept(monkeypatch):
    monkeypatch.setattr(hardware, "_pinned_threads", 2)
    threads, reason = contended_threads(cores=2, busy=2.0, current=2, environ={})
    assert threads == 2 and "pin_threads" in reason
    # a count set since then is no longer the pinned one
    assert contended_threads(cores=4, busy=3.0, current=3, environ={})[0] == 1


def test_busy_cores_measurement_is_a_number():
    busy, how = hardware.busy_cores_of_others(interval=0.05)
    assert 0.0 <= busy <= max(hardware.available_cpus(), 1) * 4
    assert how


def test_context_manager_applies_and_restores(monkeypatch, caplog):
    previous = torch.get_num_threads()
    monkeypatch.setattr(hardware, "contended_threads", lambda current: (1, "2 cores, ~2.0 busy: 1 intra-op thread"))
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="efficient_tagging.hardware"):
            with threads_for_cpu_work("cpu") as threads:
                assert threads == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "1 intra-op thread" in caplog.records[0].getMessage()
        caplog.clear()
        with threads_for_cpu_work("cpu", log=False):
            pass
        assert not caplog.records
    finally:
        torch.set_num_threads(previous)


def test_context_manager_leaves_other_devices_alone(monkeypatch):
    monkeypatch.setattr(hardware, "contended_threads", lambda current: pytest.fail("decided for a GPU job"))
    with threads_for_cpu_work("meta") as threads:
        assert threads == torch.get_num_threads()
