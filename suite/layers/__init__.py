"""Quantization building blocks, below the models: quantizers, quantized convs, per-bit-width norms.

Nothing here imports ``suite.models`` or ``suite.methods``. Every quantized layer implements
``QuantizedLayer`` (``base.py``), which is all that costs, storage and the switching-error analysis use.
"""
