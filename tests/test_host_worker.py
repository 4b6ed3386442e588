"""The encoder's second host process: results and errors come back as from a call here,
and a worker that stopped is reported, then started again."""

import math
import time

import pytest

from gipp_jax.host_worker import HostWorker, WorkerUnavailable


def test_a_call_runs_in_the_worker_and_its_errors_come_back():
    worker = HostWorker()
    try:
        worker.submit(math.comb, 10, 3)
        assert worker.result() == 120
        worker.submit(math.sqrt, -1.0)
        with pytest.raises(ValueError, match="math domain error"):
            worker.result()
        worker.submit(time.sleep, 30)
        worker._process.kill()  # stopped while it works
        with pytest.raises(WorkerUnavailable):
            worker.result()
        worker.submit(math.comb, 5, 2)  # a new worker
        assert worker.result() == 10
    finally:
        worker.close()
    assert worker._process is None


def test_both_gives_the_same_answers_with_or_without_the_worker():
    import operator

    from gipp_jax import host_worker
    assert host_worker.both((math.comb, (5, 2)), (math.comb, (6, 2)), parallel=False) == (10, 15)
    assert host_worker.both((math.comb, (5, 2)), (math.comb, (6, 2))) == (10, 15)
    with pytest.raises(ZeroDivisionError):  # an error here stops the worker, not waiting for it
        host_worker.both((operator.truediv, (1, 0)), (time.sleep, (60,)))
    assert host_worker.shared()._process is None
    assert host_worker.both((math.comb, (5, 2)), (math.comb, (6, 2))) == (10, 15)  # a new one
