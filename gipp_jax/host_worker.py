"""A second host process for the encoder's NumPy work, so that it runs on two cores.

The code refinement (:mod:`gipp_jax.refine`) is a sequential search in NumPy on small
arrays: one core, the interpreter's. Where the image splits into two halves whose
Gaussians do not touch each other, each half goes to its own process and the two run at once.

The process is a plain ``python`` running :func:`serve`, which reads pickled calls
``(function, args)`` on its standard input and writes their pickled results on its
standard output. :mod:`multiprocessing` was not used: its ``spawn`` and ``forkserver``
start a child by importing the parent's main script again (a user's script without a
``__main__`` guard would run twice), and ``fork`` copies a process whose JAX threads may
hold locks. The worker starts once, at the first call, and stays until the parent exits;
it runs with JAX on the CPU, and the functions sent to it should not need JAX at all.
"""

from __future__ import annotations

import atexit
import os
import pickle
import signal
import subprocess
import sys
import traceback


class WorkerUnavailable(RuntimeError):
    """The worker could not start or stopped; the caller does the work itself."""


class HostWorker:
    """One worker process; :meth:`submit` a call, do other work, then collect its :meth:`result`."""

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._pending = False
        self.failed = False  # set when it could not start or stopped while working

    def _start(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        env = dict(os.environ, JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this process's gipp_jax
        try:
            # -c, not -m: the package imports this module, and runpy would run it twice.
            self._process = subprocess.Popen(
                [sys.executable, "-c", "from gipp_jax.host_worker import serve; serve()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as e:
            self.failed = True
            raise WorkerUnavailable(f"the host worker did not start: {e}") from e
        return self._process

    def submit(self, function, *args) -> None:
        """Sends ``function(*args)`` (both picklable: a module-level function) to the worker."""
        if self._pending:
            raise RuntimeError("collect the last call's result before submitting another")
        process = self._start()
        try:
            pickle.dump((function, args), process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            process.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self.close()
            self.failed = True
            raise WorkerUnavailable(f"the host worker stopped: {e}") from e
        self._pending = True

    def result(self):
        """The submitted call's return value; its exception is raised here as it was there."""
        self._pending = False
        try:
            ok, value = pickle.load(self._process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self.close()
            self.failed = True
            raise WorkerUnavailable(f"the host worker stopped: {e}") from e
        if not ok:
            raise value
        return value

    def close(self, kill: bool = False) -> None:
        """Stops the worker: once it finished its call, or at once with ``kill``."""
        process, self._process, self._pending = self._process, None, False
        if process is None:
            return
        if kill:
            process.kill()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_shared: HostWorker | None = None


def shared() -> HostWorker | None:
    """The process's worker (started at its first call, stopped at exit); None once it
    failed, for the rest of the process."""
    global _shared
    if _shared is None:
        _shared = HostWorker()
        atexit.register(_shared.close)
    return None if _shared.failed else _shared


def two_cores() -> bool:
    """Whether this process may run on two cores or more (then :func:`both` runs at once)."""
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except AttributeError:  # not on every platform
        return (os.cpu_count() or 1) >= 2


def both(here: tuple, there: tuple, *, parallel: bool = True) -> tuple:
    """``(function(*args) for here, function(*args) for there)``, each a ``(function,
    args)`` pair: ``there`` in the :func:`shared` worker while ``here`` runs in this
    process, or after it here without ``parallel`` or when the worker is unavailable
    (so ``there`` must not depend on what ``here`` changes, nor the reverse)."""
    worker = shared() if parallel else None
    if worker is not None:
        try:
            worker.submit(there[0], *there[1])
        except WorkerUnavailable:
            worker = None
    try:
        mine = here[0](*here[1])
        if worker is not None:
            return mine, worker.result()
    except WorkerUnavailable:
        pass
    except BaseException:  # an error here, or Ctrl-C: the worker's answer would go unread
        if worker is not None:
            worker.close(kill=True)
        raise
    return mine, there[0](*there[1])


def serve() -> None:
    """The worker's loop: calls in, results out, until its input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops this one
    calls = sys.stdin.buffer
    results = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the results
    while True:
        try:
            function, args = pickle.load(calls)
        except (EOFError, pickle.UnpicklingError):  # the parent closed its end (or stopped mid-call)
            return
        try:
            reply = (True, function(*args))
        except Exception as e:  # noqa: BLE001 - sent back and raised in the caller
            try:
                pickle.dumps(e)
                reply = (False, e)
            except Exception:  # noqa: BLE001
                reply = (False, RuntimeError(traceback.format_exc()))
        try:
            pickle.dump(reply, results, protocol=pickle.HIGHEST_PROTOCOL)
            results.flush()
        except OSError:  # the parent stopped (a broken pipe)
            return
