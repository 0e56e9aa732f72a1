"""``lhas-ray tune`` and ``lhas-ray confirm``: search the LHAS weights, then confirm them on held-out seeds.

Modules, in the order a sweep uses them: ``space`` (search spaces), ``configs`` (a trial's config, the best config),
``trials`` (Ray Tune plumbing shared with ``run``'s side-by-side groups), ``scores`` (a trial's objectives, read back
from its run folder), ``sweep`` (Optuna + ASHA through Ray Tune), ``results`` (the sweep's tables and best config) and
``confirm`` (the held-out confirmation).

A sweep's OUT (a local path, a shared filesystem, ``file://``, ``s3://`` or ``gs://``: everything goes through the
results store and ``pyarrow.fs``)::

    OUT/sweep.yaml             what was asked: the base config, the search space, the number of trials
    OUT/trials/<trial_name>/   one full run folder per trial (``lhas-ray report`` works on it)
    OUT/_tune/sweep/           Tune's experiment state, for Tuner.restore
    OUT/trials.parquet         one row per trial: params, objectives, metrics, status, stages done, training steps
    OUT/pareto.parquet         completed trials no other completed trial beats on both immediate and objective
    OUT/importances.parquet    Optuna's fANOVA importance of each parameter for each objective
    OUT/best_config.yaml       the user's config with the best weights: ``lhas-ray run`` accepts it as is
    OUT/report.html, ...       ``lhas-ray report OUT``: the best ``tune.report_top`` completed trials, read from their
                               own folders side by side (one selector per trial), and the tuning section
    OUT/baselines/, OUT/confirm/, OUT/confirm_config.yaml, OUT/confirmation.parquet   the held-out confirmation
"""
