"""Tabular generators: CTGAN and TVAE fitted with the ``ctgan`` package (TabularSpec, save_checkpoint)."""

from edgegen.converters.tabular.spec import TabularSpec, save_checkpoint

__all__ = ["TabularSpec", "save_checkpoint"]
