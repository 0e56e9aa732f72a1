"""Console progress and per-phase wall time of the recipe's units, and the start-up cost booked to a run's first unit.

Kept out of the recipe's path: ``protocol.py`` asks a ``Timer`` for a span per phase and nothing more.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from lhas_ray.store import ResultStore, Unit
from lhas_ray.training.dist import broadcast_object, rank

log = logging.getLogger("lhas_ray.protocol")


@dataclass
class Progress:
    """Progress lines for the driver's console: where the group is, elapsed time, and a remaining estimate."""

    total_units: int
    done_units: int = 0
    started: float = field(default_factory=time.perf_counter)
    where: str = ""

    def phase(self, phase: str) -> None:
        if rank() != 0:
            return
        elapsed = time.perf_counter() - self.started
        left = (
            f", ~{elapsed / self.done_units * (self.total_units - self.done_units):.0f}s left"
            if self.done_units
            else ""
        )
        log.info(
            "[%d/%d] %s: %s (elapsed %.0fs%s)", self.done_units + 1, self.total_units, self.where, phase, elapsed, left
        )


@dataclass
class Timer:
    """Wall seconds per phase of one unit of work; announces each phase on the progress log."""

    seconds: dict[str, float] = field(default_factory=dict)
    progress: Progress | None = None

    @contextmanager
    def __call__(self, phase: str):
        """``with timer("training"): ...`` adds the block's wall seconds to ``seconds["training"]``."""
        if self.progress is not None:
            self.progress.phase(phase)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0

    def rows(self) -> list[dict]:
        """The timings table's rows of this unit."""
        return [{"phase": k, "seconds": v} for k, v in self.seconds.items()]


def worker_start_seconds(store: ResultStore, config: dict, n_stages: int) -> float | None:
    """Seconds from ``fit()`` to this worker's first step, or None when Ray Train restarted the group
    (FailureConfig): the time since fit() began is then not a start-up cost, so none is booked."""
    since = config.get("fit_started")
    if since is None:
        return None
    units = [Unit(key, seed, t) for key, seed in config["trajectories"] for t in range(n_stages + 1)]
    restart = store.committed_after(units, since) if rank() == 0 else None
    return None if broadcast_object(restart) else time.time() - since


def quiet_libraries() -> None:
    """Progress bars of Ray Data and transformers would drown the protocol's own progress lines."""
    import ray.data
    import transformers

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
