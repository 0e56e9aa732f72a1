"""The report of a run: ``write_report(OUT)`` (page.py) from the loaded run (load.py), its figures (figures.py), the
verdict (verdict.py), tables (tables.py) and TensorBoard scalars (tensorboard.py)."""

from lhas_ray.report.page import SECTIONS, write_report
from lhas_ray.report.tensorboard import write_tensorboard

__all__ = ["SECTIONS", "write_report", "write_tensorboard"]
