"""Where training computes and in what number format: the device, the precision of ce's
products with the catalogue, and the cores this process may use."""

from __future__ import annotations

import os

import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` option value (``auto``: CUDA when available).

    Raises
    ------
    ValueError
        If ``cuda`` is asked for and torch sees no GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda': torch sees no CUDA GPU here; use device='cpu'")
    return torch.device(name)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX (elsewhere bfloat16 products are emulated, and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch.cpu
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_logits_precision(name: str, device: torch.device) -> torch.dtype:
    """The number format of ce's products with the catalogue for a ``logits_precision``
    value (``auto``: bfloat16 where :func:`bf16_is_fast`, else float32)."""
    if name == "auto":
        name = "bf16" if bf16_is_fast(device) else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def available_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
