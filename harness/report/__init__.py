"""``nvfp4-bench report``: a static HTML report (tables + matplotlib figures) of recorded data."""

from harness.report.data import ReportData, gather
from harness.report.html import render

__all__ = ["ReportData", "gather", "render"]
