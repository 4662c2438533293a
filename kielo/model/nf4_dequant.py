"""NF4 dequantization of a bitsandbytes 4-bit weight in one Triton kernel, for the fused 4-bit + LoRA node.

Why kielo has its own kernel: every training step dequantizes each frozen 4-bit weight three times (forward,
checkpoint recompute, input gradient), 672 times a step on Llama-3.1-8B. bitsandbytes 0.50 does each in three
launches with double quantization (its 8-bit absmax dequantize, the offset add, then ``kDequantizeBlockwise``).
This kernel decodes the nested absmax in the same pass: on an H100 it is 1.35-1.6x faster per weight than
bitsandbytes' ``dequantize_4bit`` on Llama-3.1-8B's shapes, and the training step 2.3% faster (bench/NOTES.md,
lever 17). Everywhere else (merge, export, CPU inference) kielo keeps bitsandbytes' own ``dequantize_4bit``.

The arithmetic is bitsandbytes': ``code[q] * absmax`` in fp32, rounded once to the output dtype, with the nested
absmax ``code2[a] * absmax2 + offset`` in fp32. bitsandbytes multiplies and adds in two kernels; here the
compiler may fuse the two into one FMA, which could move an absmax by its last fp32 bit (on Llama-3.1-8B's
shapes no weight differed from bitsandbytes': tests/test_gpu.py). Two 4-bit codes per byte, the high nibble
first, as bitsandbytes packs them.
Only NF4 takes this path; FP4, a transposed packed weight, CPU tensors or a missing Triton go to bitsandbytes.
"""

from __future__ import annotations

import functools

import torch

KERNELS = ("triton", "bitsandbytes")
BLOCK_BYTES = 1024  # packed bytes per program: 2,048 weights, a few KiB of registers per CTA


@functools.cache
def _kernel():
    """The Triton kernel, compiled on first use (importing Triton is slow and it is optional)."""
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_dequant(
        q_ptr, code_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, out_ptr, n_out,
        BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        byte_at = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        in_range = byte_at * 2 < n_out
        byte = tl.load(q_ptr + byte_at, mask=in_range, other=0).to(tl.int32)
        hi = tl.load(code_ptr + (byte >> 4))  # the 16-entry code stays in L1
        lo = tl.load(code_ptr + (byte & 15))
        block = (byte_at * 2) // BLOCKSIZE  # both weights of a byte share a block: blocksizes are even
        if NESTED:
            a8 = tl.load(absmax_ptr + block, mask=in_range, other=0).to(tl.int32)
            scale = tl.load(code2_ptr + a8) * tl.load(absmax2_ptr + block // BLOCKSIZE2, mask=in_range, other=0)
            scale = scale + tl.load(offset_ptr)
        else:
            scale = tl.load(absmax_ptr + block, mask=in_range, other=0)
        pair = tl.join(hi * scale, lo * scale)  # (BLOCK, 2): weight 2i, then 2i + 1
        vals = tl.reshape(pair, (2 * BLOCK,))
        out_at = pid.to(tl.int64) * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)
        tl.store(out_ptr + out_at, vals.to(out_ptr.dtype.element_ty), mask=out_at < n_out)

    return nf4_dequant


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def takes_triton(packed: torch.Tensor, quant_state) -> bool:
    """Whether :func:`dequantize_nf4` handles this weight (else bitsandbytes does)."""
    n = 1
    for d in quant_state.shape:
        n *= int(d)
    nested = bool(getattr(quant_state, "nested", False))
    return (
        quant_state.quant_type == "nf4"
        and packed.dtype == torch.uint8
        and packed.is_contiguous()
        and packed.numel() == (n + 1) // 2
        and not (packed.dim() == 2 and packed.shape[0] == 1 and n > 2)  # bitsandbytes' transposed form
        and quant_state.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and (not nested or quant_state.absmax.dtype == torch.uint8)
        and (packed.device.type == "cuda" or _interpreting())
        and triton_available()
    )


def _interpreting() -> bool:
    """Triton's interpreter (TRITON_INTERPRET=1) runs the kernel on CPU tensors: how the CPU tests run it."""
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def dequantize_nf4(packed: torch.Tensor, quant_state, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The dense (out, in) weight in ``dtype`` (default ``quant_state.dtype``), rounded once from fp32 as
    bitsandbytes rounds; callers check :func:`takes_triton` first."""
    out = torch.empty(tuple(quant_state.shape), dtype=dtype or quant_state.dtype, device=packed.device)
    n = out.numel()
    nested = bool(getattr(quant_state, "nested", False))
    code = quant_state.code.to(device=packed.device, dtype=torch.float32)
    if nested:
        s2 = quant_state.state2
        absmax, absmax2, code2 = quant_state.absmax, s2.absmax.float(), s2.code.to(device=packed.device, dtype=torch.float32)
        # the offset stays a device tensor, read by the kernel: float() of it would wait for the GPU every call
        offset, blocksize2 = torch.as_tensor(quant_state.offset, dtype=torch.float32, device=packed.device), int(s2.blocksize)
    else:
        absmax, absmax2, code2 = quant_state.absmax.float(), code, code  # absmax2/code2 unused without nesting
        offset, blocksize2 = code, 1
    grid = (triton_cdiv(n, 2 * BLOCK_BYTES),)
    _kernel()[grid](
        packed, code, absmax, absmax2, code2, offset, out, n,
        BLOCKSIZE=int(quant_state.blocksize), BLOCKSIZE2=blocksize2, NESTED=nested, BLOCK=BLOCK_BYTES,
    )  # fmt: skip
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def resolve(kernel: str) -> str:
    """The kernel for ``kernel``: "auto" is "triton" where Triton imports (each weight still goes to bitsandbytes where
    :func:`takes_triton` says no, e.g. on CPU), else "bitsandbytes"."""
    if kernel not in ("auto", *KERNELS):
        raise ValueError(f"unknown dequantize kernel {kernel!r}: auto, {', '.join(KERNELS)}")
    if kernel == "auto":
        return "triton" if triton_available() else "bitsandbytes"
    return kernel


def dequantize_layer(layer, kernel: str) -> torch.Tensor:
    """A bitsandbytes 4-bit layer's weight as a dense (out, in) matrix in its quantization's dtype, through
    ``kernel`` ("triton" where :func:`takes_triton` allows, else bitsandbytes)."""
    from kielo.model.load import dequantize_4bit_weight

    quant_state = getattr(layer.weight, "quant_state", None) or layer.quant_state
    if kernel == "triton" and takes_triton(layer.weight.data, quant_state):
        return dequantize_nf4(layer.weight.data, quant_state)
    return dequantize_4bit_weight(layer)


# bitsandbytes 0.50 (backends/cuda/ops.py, gemm_4bit) multiplies inputs of more rows than this by dequantizing
# the weight and calling F.linear; at or under it, its own fused 4-bit GEMM may win and it chooses per shape.
BNB_DEQUANT_ROWS = 1536


def linear_4bit(x: torch.Tensor, layer, kernel: str) -> torch.Tensor:
    """``layer(x)`` for a bias-free bitsandbytes 4-bit layer outside autograd: above bitsandbytes' own bound the
    same dequantize + F.linear it does (the weight dequantized into x's dtype, as it does), with ``kernel``."""
    quant_state = getattr(layer.weight, "quant_state", None) or layer.quant_state
    rows = x.numel() // max(1, x.shape[-1])
    same_dtype = getattr(layer, "compute_dtype", None) in (None, x.dtype)  # else bitsandbytes casts x first
    if kernel == "triton" and rows > BNB_DEQUANT_ROWS and same_dtype and takes_triton(layer.weight.data, quant_state):
        return torch.nn.functional.linear(x, dequantize_nf4(layer.weight.data, quant_state, dtype=x.dtype))
    return layer(x)
