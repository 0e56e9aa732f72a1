"""What the terminal shows: the protocol's own progress, one line (or a live bar on a terminal) per committed unit,
and lhas_ray's warnings. Everything Ray, DeepSpeed, torch, transformers and Optuna write goes to ``OUT/logs/``
instead: ``driver.log`` for this process, one file per Train worker. ``--verbose`` restores all of it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, redirect_stdout
from dataclasses import dataclass, field

from lhas_ray.store import ResultStore, Unit

CONSOLE = "lhas_ray.console"
LOGS = "logs"
# loggers that install their own terminal handlers; routed to the driver log instead
LIBRARY_LOGGERS = ("ray", "optuna", "deepspeed", "DeepSpeed", "transformers", "datasets", "torch", "filelock")

log = logging.getLogger(CONSOLE)


class _OwnLines(logging.Filter):
    """The terminal keeps lhas_ray's records only; the driver log keeps everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("lhas_ray")


def configure_console(verbose: bool = False) -> None:
    """The terminal shows lhas_ray's records only (all of them with ``verbose``); every library's records and Python
    warnings go to the root logger, where ``log_to_folder`` adds the driver log once OUT is known to be this run's."""
    root = logging.getLogger()
    _drop(root, "terminal")
    root.setLevel(logging.INFO)
    terminal = logging.StreamHandler(sys.stdout)
    terminal.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    if not verbose:
        terminal.addFilter(_OwnLines())
    terminal.lhas_ray = "terminal"
    root.addHandler(terminal)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.captureWarnings(not verbose)
    route_library_logs()


def logs_dir(out: str | None) -> str | None:
    """``OUT/logs`` as a local path, where the driver and worker logs go; None when OUT is an object store or unset."""
    return ResultStore(out).local_path(LOGS) if out else None


def log_to_folder(out: str) -> str | None:
    """From now on append every record of this process to ``OUT/logs/driver.log`` (instead of an earlier folder's
    log); called after the folder guard, so a folder that is refused is never written to. Returns the logs folder
    (None when OUT is an object store)."""
    logs = logs_dir(out)
    root = logging.getLogger()
    _drop(root, "file")
    if logs:
        os.makedirs(logs, exist_ok=True)
        file = logging.FileHandler(os.path.join(logs, "driver.log"))
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file.lhas_ray = "file"
        root.addHandler(file)
    return logs


def _drop(root: logging.Logger, kind: str) -> None:
    """Remove the handler of this kind that an earlier call added (never anyone else's)."""
    for handler in [h for h in root.handlers if getattr(h, "lhas_ray", None) == kind]:
        root.removeHandler(handler)
        handler.close()


def route_library_logs() -> None:
    """Libraries that print through handlers of their own (Ray's, Optuna's) hand their records to the root logger
    instead, so the terminal filter and the driver log see them; call again after ``ray.init``, which adds them back."""
    names = [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in LIBRARY_LOGGERS]
    for name in {*LIBRARY_LOGGERS, *names}:  # their children too: Ray Data and Ray Tune configure their own
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    try:
        import optuna

        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()
    except ImportError:  # optuna is a dependency; a broken install should not stop a run here
        pass


def raylet_messages_to_log() -> None:
    """Messages Ray's raylet pushes to the driver ("(raylet) WARNING: 10 PYTHON worker processes have been started
    ...") go to the ``ray.raylet`` logger, so the driver log keeps them and the terminal does not; Ray prints them
    from a thread of its own straight to stdout, whatever ``log_to_driver`` says. Call before ``ray.init``."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "lhas_ray", False):
        return
    raylet = logging.getLogger("ray.raylet")

    def print_to_stdstream(data, ignore_prefix: bool):
        if data.get("pid") == "raylet":
            for line in data.get("lines", []):
                raylet.warning("%s", line)
        else:
            original(data, ignore_prefix)

    print_to_stdstream.lhas_ray = True
    ray_worker.print_to_stdstream = print_to_stdstream


@contextmanager
def library_prints(out: str, verbose: bool = False) -> Iterator[None]:
    """What libraries ``print`` rather than log during the block (Ray Tune's experiment header, trial tables and
    result paths, at any verbosity) is appended to ``OUT/logs/driver.log``; lhas_ray's own lines keep the terminal,
    their handler holds the real stdout."""
    if verbose:
        yield
        return
    logs = logs_dir(out)
    if logs:
        os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, "driver.log") if logs else os.devnull, "a") as sink, redirect_stdout(sink):
        yield


@contextmanager
def worker_output(logs: str | None, name: str) -> Iterator[None]:
    """A Train worker's stdout and stderr (Python and C level: DeepSpeed, gloo, torch warnings) appended to
    ``logs/NAME.log`` for the block; a no-op without a local logs folder."""
    if not logs:
        yield
        return
    os.makedirs(logs, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(os.path.join(logs, f"{name}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class UnitWatch:
    """Progress of a run read from its commit markers: a line per unit committed since the watch began, with the
    elapsed time and a remaining estimate from the pace of the units committed so far (none before the second)."""

    store: ResultStore
    units: list[Unit]
    bar: object | None = None  # a tqdm bar on a terminal; None: a log line per unit
    started: float = field(default_factory=time.perf_counter)
    _seen: set[str] = field(default_factory=set)
    _first: float | None = None
    _new: int = 0

    def __post_init__(self) -> None:
        self._seen = self.store.committed_keys() & {u.key for u in self.units}

    def poll(self) -> None:
        """Announce every unit committed since the last poll, in the order of ``units``."""
        committed = self.store.committed_keys()
        for unit in self.units:
            if unit.key in committed and unit.key not in self._seen:
                self._seen.add(unit.key)
                self._announce(unit)

    def _announce(self, unit: Unit) -> None:
        now = time.perf_counter()
        self._new += 1
        if self._first is None:
            self._first = now
        left = len(self.units) - len(self._seen)
        pace = (now - self._first) / (self._new - 1) if self._new > 1 else None
        eta = f", ~{_clock(pace * left)} left" if pace is not None and left else ""
        what = f"{unit.selector} seed {unit.seed}: " + ("base model" if unit.stage == 0 else f"stage {unit.stage}")
        if self.bar is not None:
            self.bar.set_postfix_str(f"last {what}{eta}", refresh=False)
            self.bar.update(1)
            return
        log.info(
            "[%d/%d] %s done (elapsed %s%s)", len(self._seen), len(self.units), what, _clock(now - self.started), eta
        )


@contextmanager
def watch_units(store: ResultStore, units: list[Unit], live: bool | None = None, interval: float = 2.0):
    """Poll ``store``'s commit markers from a background thread while the block runs (the driver is blocked in
    ``fit()``), and once more at its end. ``live`` (default: stdout is a terminal) draws one tqdm bar instead of a
    line per unit; lhas_ray's other lines print above it."""
    live = sys.stdout.isatty() if live is None else live
    with ExitStack() as stack:
        bar = None
        if live:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            size = shutil.get_terminal_size((100, 24))  # a pty that reports 0 x 0 (tqdm would hide the bar): 100 x 24
            bar = stack.enter_context(
                tqdm(
                    total=len(units),
                    unit="unit",
                    ncols=size.columns,
                    nrows=size.lines,
                    bar_format=_BAR,
                    file=sys.stdout,
                )
            )
            stack.enter_context(logging_redirect_tqdm())
        watch = UnitWatch(store, units, bar)
        if bar is not None:
            bar.update(len(watch._seen))
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    watch.poll()
                    if bar is not None:
                        bar.refresh()
                except OSError as e:  # a flaky object store: progress is best effort, results are not
                    log.debug("progress poll failed: %s", e)

        thread = threading.Thread(target=loop, name="lhas-ray-progress", daemon=True)
        thread.start()
        try:
            yield watch
        finally:
            stop.set()
            thread.join()
            watch.poll()


_BAR = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} units [{elapsed}{postfix}]"
