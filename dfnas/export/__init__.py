"""Exporting searched networks (``arch.json`` + ``model.safetensors`` + ``model.onnx``) and loading them back."""

from dfnas.export.network import ARCH_FILE, WEIGHTS_FILE, export_network, load_exported, read_export
from dfnas.export.onnx_file import ONNX_FILE, ONNX_OPSET

__all__ = ["ARCH_FILE", "ONNX_FILE", "ONNX_OPSET", "WEIGHTS_FILE", "export_network", "load_exported", "read_export"]
