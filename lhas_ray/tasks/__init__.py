"""Where examples come from: one schema (``schema.py``), many sources (``builtin``, ``text``, ``hf``), and
``suite.build_suite``, which gives a run every set it uses (pools, eval, probe, OOD, general, warm-up, proxy)."""
