"""``model.onnx`` beside ``model.safetensors``: the plain network as an ONNX graph, for runtimes without torch.

ONNX is optional (``pip install "dfnas[onnx]"``): without the ``onnx`` package the export writes everything
else and records why the ONNX file is missing. The graph comes from torch's TorchScript-based exporter
(``dynamo=False``): it needs only ``onnx`` (the dynamo exporter also needs ``onnxscript``) and writes the same
bytes for the same weights in every process, so two exports of one run are byte-identical.
"""

from __future__ import annotations

import copy
import io
import sys
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfnas.io import atomic_write_bytes, sha256_file

ONNX_FILE = "model.onnx"
# opset 17 (ONNX 1.12, 2022): read by every onnxruntime since 1.14 and by most other runtimes; the network
# uses only convolutions, BatchNorm, pooling, ReLU, Gemm and Add, which all lower the same way since opset 13
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"
INSTALL_HINT = 'pip install "dfnas[onnx]" (or: pip install onnx onnxruntime)'


def onnx_missing_reason() -> str | None:
    """Why ONNX export cannot run here (the ``onnx`` package is absent), or None when it can."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return f"the onnx package is not installed; {INSTALL_HINT}"
    return None


def _stderr(msg: str) -> None:
    print(f"[dfnas export] {msg}", file=sys.stderr, flush=True)


def write_onnx(net: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``net`` (a plain network, inference mode) to ``path`` as ONNX; return its arch.json record.

    ``input_shape`` is (channels, height, width); the batch dimension is dynamic. The record holds the file
    name, its SHA-256, the opset and the tensor names, or ``{"file": None, "skipped": reason}`` when ONNX
    cannot be written (``onnx`` not installed, or the exporter failed); then a stale file at ``path`` is
    removed and ``log`` (default: a line on stderr) says why and how to get ONNX.
    """
    say = log or _stderr
    path = Path(path)
    reason = onnx_missing_reason()
    if reason is None:
        reason, data = _export_bytes(net, input_shape)
    if reason is not None:
        path.unlink(missing_ok=True)  # a model.onnx left by an earlier export would not match these weights
        say(f"{ONNX_FILE} skipped: {reason}")
        return {"file": None, "skipped": reason}
    atomic_write_bytes(path, data)
    return {"file": path.name, "sha256": sha256_file(path), "opset": ONNX_OPSET, "input": INPUT_NAME,
            "output": OUTPUT_NAME, "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}},
            "input_shape": ["batch", *input_shape], "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
            "onnx_version": metadata.version("onnx")}


def _export_bytes(net: nn.Module, input_shape: tuple[int, int, int]) -> tuple[str | None, bytes]:
    """(None, ONNX bytes) or (why not, b"")."""
    import onnx

    # a CPU copy in eval mode: exporting must not move or switch the caller's network
    model = copy.deepcopy(net).to("cpu").eval()
    example = torch.zeros(1, *input_shape)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 warns that the TorchScript exporter is legacy; it is chosen on purpose (see above)
            for msg in (".*legacy TorchScript-based ONNX export", ".*feature will be removed"):
                warnings.filterwarnings("ignore", message=msg, category=DeprecationWarning)
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    except Exception as e:  # the exporter and checker raise many types; ONNX is an extra, the export goes on
        return f"the ONNX exporter failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", b""
    return None, buf.getvalue()
