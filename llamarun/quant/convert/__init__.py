"""Converters from pre-quantized checkpoint formats onto the shared packed layouts (`quant/layouts.py`).

One module per format, each a set of pure functions from the tensors a file stores to an
`Int4Weight`, `Fp8Weight` or `Int8Weight` whose `dequantize` equals the format's own dequantization:

- `gguf.py`: Q4_0, Q4_1, Q4_K -> int4 in groups of 32, exactly; Q8_0 and the other block types are
  re-quantized to int8 per channel with the smallest error (`requantize.py`), which is measured.
- `mlx.py`: MLX affine 4-bit -> int4, exactly (MLX's uint32 words are already our nibble order).
- `awq.py`, `gptq.py`: AutoAWQ (GEMM) and GPTQ int4 -> int4, exactly; GPTQ act-order is refused.
- `compressed.py`: compressed-tensors FP8 -> fp8, pack-quantized int4/int8 -> int4/int8, int8 -> int8.

`Conversion` (in `result.py`) carries the packed weight plus whether it is exact and, when not, the
relative error of the re-quantization; `report.py` sums those into the note `show` prints.
"""
