"""Quantized execution: packed weight layouts, the methods that compute with them, and checkpoint writing.

The model file never changes: `method.py` defines the strategy interface (`quantize`, `create`, the
module's forward); `fp8.py`, `int8.py`, `int4.py` are the methods; `rtn.py` quantizes float weights
onto `layouts.py`; `modes.py` is the `--weights`/`--quantize` policy; `footprint.py` says what each
layer group takes; `compressed_tensors.py` and `save.py` write `llamarun quantize` checkpoints.
Linears are swapped tensor by tensor as they load (gpt-fast's module swap), so the expanded float
weights of the whole model never exist at once.
"""
