"""The trajectory metrics as TensorBoard scalars, one run per selector and seed."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import pandas as pd

from lhas_ray.store import ResultStore

logger = logging.getLogger("lhas_ray.report")


_TB_SUFFIX = ".trajectory"


def write_tensorboard(store_or_out: ResultStore | str, trajectory: pd.DataFrame) -> str | None:
    """Write the trajectory metrics per stage as scalars under OUT/tensorboard/<selector>/<seed>/; local stores only."""
    store = store_or_out if isinstance(store_or_out, ResultStore) else ResultStore(store_or_out)
    root = store.local_path("tensorboard")
    if root is None:
        logger.info("TensorBoard trajectory scalars skipped: %s is not on local disk", store.uri)
        return None
    from torch.utils.tensorboard import SummaryWriter

    for (selector, seed), rows in trajectory.groupby(["selector", "seed"], sort=True):
        logdir = os.path.join(root, str(selector), str(seed))
        for old in glob.glob(os.path.join(logdir, f"events.out.tfevents.*{_TB_SUFFIX}")):
            os.remove(old)  # rerunning the report replaces its own scalars instead of duplicating them
        writer = SummaryWriter(log_dir=logdir, filename_suffix=_TB_SUFFIX)
        for r in rows.itertuples(index=False):
            if np.isfinite(r.value):
                writer.add_scalar(f"trajectory/{r.metric}", float(r.value), global_step=int(r.stage))
        writer.close()
    return root
