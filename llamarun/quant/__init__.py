"""Quantized execution: packed weight formats and the linear layers that compute with them.

The model file never changes: after a linear's weight is loaded, a `WeightPacking` may replace the
`nn.Linear` with a packed module (gpt-fast's module swap, done tensor by tensor so the expanded
float weights of the whole model never exist at once).
"""
