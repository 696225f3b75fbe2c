"""Synthesis stage: invert a frozen teacher into a labelled image set (plus the unreal baselines).

``synthesize(cfg, out)`` writes a dataset directory (``dfnas/data/shards.py`` format); ``inspect_dataset``
reports how teacher-like it is; ``evaluate_teacher`` measures a teacher's top-1 on real data.
"""

from dfnas.synthesis.config import PRESETS, SynthesisConfig, make_config
from dfnas.synthesis.inspect import evaluate_teacher, format_report, inspect_dataset
from dfnas.synthesis.methods import SYNTHESIS_METHODS, SynthesisMethod
from dfnas.synthesis.runner import synthesize

__all__ = ["PRESETS", "SYNTHESIS_METHODS", "SynthesisConfig", "SynthesisMethod", "evaluate_teacher", "format_report",
           "inspect_dataset", "make_config", "synthesize"]
