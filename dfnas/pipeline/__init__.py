"""Pieces of ``dfnas run`` (see ``dfnas.run``): the typed RunConfig and presets, the run directory with its
stage markers, the stage functions and the stage list (``stages.STAGE_LIST``)."""

from dfnas.pipeline.config import RunConfig, build_run_config, list_presets, load_run_config

__all__ = ["RunConfig", "build_run_config", "list_presets", "load_run_config"]
