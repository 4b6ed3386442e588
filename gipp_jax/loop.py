"""The fit loop: a step program run over a range of steps in compiled chunks.

Every fit of the package runs it: one image's (:class:`gipp_jax.train.Fitter`), a batch's
(:class:`gipp_jax.batch.BatchFitter`) and compression's quantization-aware phases
(:func:`gipp_jax.compress.compress`). What a fit gives it is data and plain callables:

* ``program(capacity, state, num_steps) -> (state, usage)``: ``num_steps`` steps from
  ``state`` in one compiled call (a ``lax.scan`` of :func:`scan_steps`, static length
  ``chunk_steps``, so a short chunk compiles nothing new) and the renderer's largest usage
  ``[pairs, chunks]`` over them;
* ``events``: host-side callables ``state -> state`` keyed by the step after which they
  run (growth, a change of level), in their order;
* ``postfix(state) -> dict``: what the progress bar shows after each chunk;
* ``on_chunk(state)``: an observer called with each kept chunk's state (a trace);
* :class:`Checkpoints`: where, under which fingerprint and how often the state is saved.

:meth:`FitLoop.run` cuts chunks at ``chunk_steps`` and at every event step, runs a chunk
again with a larger :class:`~gipp_jax.raster.Capacity` when its renders outgrew the
static one (one compile more, counted in ``recompiles``), advances the progress bar, and
saves the state every ``Checkpoints.seconds`` and at the end. A step program keeps its
best state with :func:`keep_best`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from gipp_jax.io import atomic_write_npz
from gipp_jax.raster import Capacity

Program = Callable[[Capacity, Any, int], tuple[Any, np.ndarray]]


def scan_steps(step: Callable, state, chunk_steps: int, num_steps):
    """Applies ``step(state) -> (state, usage)`` ``num_steps <= chunk_steps`` times in one
    ``lax.scan`` of static length (later iterations are skipped, so a short last chunk needs
    no new compile). Returns the state and the maximum renderer usage ``[pairs, chunks]``."""

    def body(carry, i):
        state, usage = carry
        new_state, step_usage = jax.lax.cond(
            i < num_steps, step, lambda s: (s, jnp.zeros(2, jnp.int32)), state)
        return (new_state, jnp.maximum(usage, step_usage)), None

    (state, usage), _ = jax.lax.scan(body, (state, jnp.zeros(2, jnp.int32)),
                                     jnp.arange(chunk_steps))
    return state, usage


def keep_best(better: jax.Array, best, candidate):
    """``candidate`` where ``better`` (a scalar bool, traced) else ``best``, leaf by leaf of
    two pytrees of one structure: how every step program keeps its best state."""
    return jax.tree_util.tree_map(lambda b, c: jnp.where(better, c, b), best, candidate)


def save_state(path: str | os.PathLike, state, fingerprint: str) -> None:
    """Writes a pytree of arrays and a fingerprint of what produced it, atomically."""
    arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(state))}
    arrays["fingerprint"] = np.array(fingerprint)
    atomic_write_npz(path, arrays)


def load_state(path: str | os.PathLike | None, template, fingerprint: str):
    """The pytree :func:`save_state` wrote at ``path`` in ``template``'s structure, or
    ``template`` itself if there is none, it is unreadable or its fingerprint differs."""
    if not path or not os.path.exists(path):
        return template
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                return template
            leaves, treedef = jax.tree_util.tree_flatten(template)
            loaded = [jnp.asarray(data[f"leaf_{i:04d}"], dtype=x.dtype).reshape(x.shape)
                      for i, x in enumerate(leaves)]
    except (OSError, KeyError, ValueError):
        return template  # unreadable checkpoint: start afresh rather than fail
    return jax.tree_util.tree_unflatten(treedef, loaded)


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where a loop saves its state (``path``; None: nowhere), the fingerprint of what
    produced it (a state saved under another is not resumed) and the seconds between saves."""

    path: str | os.PathLike | None
    fingerprint: str = ""
    seconds: float = 60.0

    def save(self, state) -> None:
        if self.path:
            save_state(self.path, state, self.fingerprint)

    def load(self, template):
        """The saved state, or ``template`` where there is none under this fingerprint."""
        return load_state(self.path, template, self.fingerprint)


NO_CHECKPOINTS = Checkpoints(None)


def progress_bar(total: int, initial: int = 0):
    """A ``tqdm`` bar over optimisation steps."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)


@dataclasses.dataclass
class FitLoop:
    """A step program and what runs it (see the module docstring). ``capacity`` is the
    renderer's static buffer size, grown by :meth:`run` and :meth:`render_held` when a
    render outgrows it; an event may set it and ``program`` (a change of level)."""

    program: Program
    capacity: Capacity
    chunk_steps: int
    events: dict[int, tuple[Callable, ...]] = dataclasses.field(default_factory=dict)
    postfix: Callable[[Any], dict] | None = None
    on_chunk: Callable[[Any], None] | None = None
    checkpoints: Checkpoints = NO_CHECKPOINTS
    recompiles: int = 0

    def run(self, state, step: int, end: int, bar=None):
        """The state after steps ``step`` to ``end``, advancing ``bar`` (a
        :func:`progress_bar`, or None); saved every ``checkpoints.seconds`` and at the end."""
        last_save = time.monotonic()
        while step < end:
            upcoming = [s for s in sorted(self.events) if s > step]
            stop = min([end, step + self.chunk_steps] + upcoming[:1])
            new_state, usage = self.program(self.capacity, state, stop - step)
            if not self._holds(usage):
                continue  # some render of the chunk was incomplete: run it again, larger
            state = new_state
            if self.on_chunk is not None:
                self.on_chunk(state)
            for event in self.events.get(stop, ()):
                state = event(state)
            if bar is not None:
                bar.update(stop - step)
                if self.postfix is not None:
                    bar.set_postfix(**self.postfix(state))
            step = stop
            if self.checkpoints.path and time.monotonic() - last_save > self.checkpoints.seconds:
                self.checkpoints.save(state)
                last_save = time.monotonic()
        self.checkpoints.save(state)
        return state

    def render_held(self, render: Callable, models) -> np.ndarray:
        """``render(capacity, models) -> (images, usage)`` at the loop's capacity, grown and
        the render repeated if the models outgrew it; the images as a NumPy array."""
        images, usage = render(self.capacity, models)
        if not self._holds(usage):
            images, _ = render(self.capacity, models)
        return np.asarray(images)

    def _holds(self, usage) -> bool:
        """Whether the capacity held a usage ``[pairs, chunks]`` (of a batch: the largest);
        if not, the capacity is grown to hold it."""
        usage = np.asarray(usage).reshape(-1, 2).max(axis=0)
        if self.capacity.holds(usage):
            return True
        self.capacity = self.capacity.grown(usage)
        self.recompiles += 1
        return False
