"""Learning curves to TensorBoard: one event file per committed unit, so a resumed stage replaces its own file."""

from __future__ import annotations

import glob
import os

from lhas_ray.store import ResultStore, Unit


def log_curves(store: ResultStore, unit: Unit, rows: list[dict]) -> str | None:
    """Write a unit's curve rows as scalars ``stage{t}/{split}/{metric}`` under OUT/tensorboard/<selector>/<seed>/.

    Local stores only (TensorBoard's writer needs a local folder); returns the log dir, or None when skipped.
    """
    root = store.local_path("tensorboard")
    if root is None or not rows:
        return None
    from torch.utils.tensorboard import SummaryWriter

    logdir = os.path.join(root, unit.selector, str(unit.seed))
    suffix = f".curves-stage{unit.stage}"
    for old in glob.glob(os.path.join(logdir, f"events.out.tfevents.*{suffix}")):
        os.remove(old)
    writer = SummaryWriter(log_dir=logdir, filename_suffix=suffix)
    for r in rows:
        writer.add_scalar(f"stage{unit.stage}/{r['split']}/{r['metric']}", r["value"], global_step=r["step"])
    writer.close()
    return logdir
