"""The Markdown + HTML report of a ``dfnas run`` directory."""

from dfnas.report.build import NB201_MISSING, build_report

__all__ = ["NB201_MISSING", "build_report"]
