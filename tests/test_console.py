"""The console: library output goes to OUT/logs/, the terminal gets lhas_ray's lines, a line per committed unit."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from lhas_ray.console import configure_console, log_to_folder, watch_units
from lhas_ray.store import ResultStore, Unit


def test_library_records_go_to_the_driver_log_and_only_ours_to_the_terminal(tmp_path, capsys):
    out = str(tmp_path / "run")
    configure_console()
    logs = log_to_folder(out)
    try:
        data = logging.getLogger("ray.data")
        data.addHandler(logging.StreamHandler(sys.stdout))  # as Ray Data configures its own
        configure_console()  # route_library_logs again, as after ray.init
        data.warning("Execution finished in 0.1 seconds")
        logging.getLogger("ray").warning("Token authentication is enabled")
        logging.getLogger("lhas_ray.tasks").warning("stage 1: 3 pool rows removed")
        import warnings

        with warnings.catch_warnings():  # pytest records warnings itself: hand this one to logging as the CLI does
            warnings.simplefilter("always")
            logging.captureWarnings(False)
            logging.captureWarnings(True)
            warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated", FutureWarning, stacklevel=1)
    finally:
        logging.getLogger().removeHandler(
            next(h for h in logging.getLogger().handlers if getattr(h, "lhas_ray", "") == "file")
        )
        logging.captureWarnings(False)
    shown = capsys.readouterr().out
    assert logs == os.path.join(out, "logs")
    assert "3 pool rows removed" in shown
    assert "Execution finished" not in shown and "Token authentication" not in shown and "deprecated" not in shown
    written = open(os.path.join(logs, "driver.log")).read()
    for text in ("Execution finished", "Token authentication", "3 pool rows removed", "all_gather_into_tensor"):
        assert text in written, text


def test_a_line_per_unit_committed_after_the_watch_began(tmp_path, caplog):
    store = ResultStore(str(tmp_path))
    units = [Unit(s, 0, t) for s in ("random", "lhas") for t in range(3)]
    store.commit(units[0])  # committed by an earlier run: counted, not announced
    caplog.set_level(logging.INFO, logger="lhas_ray.console")
    with watch_units(store, units, live=False, interval=0.05) as watch:
        for unit in units[1:4]:
            store.commit(unit)
            watch.poll()
    lines = [r.getMessage() for r in caplog.records if r.name == "lhas_ray.console"]
    assert [line.split(" (")[0] for line in lines] == [
        "[2/6] random seed 0: stage 1 done",
        "[3/6] random seed 0: stage 2 done",
        "[4/6] lhas seed 0: base model done",
    ]
    assert "left" not in lines[0]  # no pace from a single unit
    assert "left)" in lines[1] and "left)" in lines[2]


def test_a_workers_python_and_c_level_output_lands_in_its_log_file(tmp_path):
    """What DeepSpeed, gloo and torch print from C++ (fd 1 and 2) is caught, not only Python's print."""
    code = textwrap.dedent(
        f"""
        import os, sys
        from lhas_ray.console import worker_output
        with worker_output({str(tmp_path)!r}, "group0-rank0"):
            print("python stdout")
            print("python stderr", file=sys.stderr)
            os.write(1, b"C-level stdout\\n")
            os.write(2, b"C-level stderr\\n")
        print("after the block")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "after the block\n" and done.stderr == ""
    written = open(tmp_path / "group0-rank0.log").read()
    for text in ("python stdout", "python stderr", "C-level stdout", "C-level stderr"):
        assert text in written


def test_what_libraries_print_goes_to_the_driver_log(tmp_path, capsys):
    """Ray Tune prints its experiment header and trial tables at any verbosity; lhas_ray's lines stay."""
    from lhas_ray.console import library_prints

    configure_console()
    with library_prints(str(tmp_path)):
        print("Configuration for experiment     sweep")
        logging.getLogger("lhas_ray.tuning").info("trial t001: seed 0 stage 1 done")
    shown = capsys.readouterr().out
    assert "trial t001" in shown and "Configuration for experiment" not in shown
    assert "Configuration for experiment" in open(tmp_path / "logs" / "driver.log").read()
    with library_prints(str(tmp_path), verbose=True):
        print("Trial status: 1 RUNNING")
    assert "Trial status" in capsys.readouterr().out


def test_on_a_terminal_the_units_are_one_live_bar(tmp_path, monkeypatch):
    """live: one tqdm bar that counts every unit and names the last one, drawn on a real pseudo-terminal, which
    reports 0 x 0 like a CI runner's or `script`'s (tqdm hides a bar whose row is outside a 0-row screen)."""
    import pty
    import select

    master, replica = pty.openpty()
    terminal = os.fdopen(replica, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", terminal)
    store = ResultStore(str(tmp_path))
    units = [Unit("lhas", 0, t) for t in range(3)]
    try:
        with watch_units(store, units, interval=0.05) as watch:  # live: stdout is a terminal
            for unit in units:
                store.commit(unit)
                watch.poll()
        terminal.flush()
        chunks = []
        while select.select([master], [], [], 0.5)[0]:  # everything the bar drew, however the pty chunked it
            chunks.append(os.read(master, 1 << 16))
        shown = b"".join(chunks).decode()
    finally:
        terminal.close()
        os.close(master)
    assert "3/3 units" in shown and "last lhas seed 0: stage 2" in shown
    assert "[1/3]" not in shown  # no per-unit lines beside the bar


def test_raylet_messages_go_to_the_log_not_the_terminal(monkeypatch, capsys):
    """Ray prints the raylet's pushed warnings to stdout from a thread of its own; after the routing they are records
    of the 'ray.raylet' logger (the driver log), and a worker's own output still prints as before."""
    import ray._private.worker as ray_worker

    from lhas_ray.console import raylet_messages_to_log

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # undone after the test
    raylet_messages_to_log()
    raylet_messages_to_log()  # idempotent: one wrapper, not two
    warning = "WARNING: 10 PYTHON worker processes have been started on node: abc"
    records: list[logging.LogRecord] = []
    collect = logging.Handler()
    collect.emit = records.append
    raylet = logging.getLogger("ray.raylet")  # a handler of its own: whether Ray's loggers propagate depends on
    raylet.addHandler(collect)  # which earlier test routed them
    try:
        ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        raylet.removeHandler(collect)
    assert warning not in capsys.readouterr().out
    assert [r.getMessage() for r in records] == [warning]
    ray_worker.print_to_stdstream(
        {"lines": ["hello from a task"], "pid": 123, "ip": "127.0.0.1", "is_err": False, "task_name": "t"},
        ignore_prefix=False,
    )
    assert "hello from a task" in capsys.readouterr().out
