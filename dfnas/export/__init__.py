"""Exporting searched networks (``arch.json`` + ``model.safetensors``) and loading them back."""

from dfnas.export.network import ARCH_FILE, WEIGHTS_FILE, export_network, load_exported, read_export

__all__ = ["ARCH_FILE", "WEIGHTS_FILE", "export_network", "load_exported", "read_export"]
