"""Numerics: how the engine's arithmetic is done, one object per mode.

`exact` reproduces one named llama.cpp CPU build bit for bit (see `qdbg.numerics.profile`);
`f32` keeps activations in float32 with dequantized weights (the error of the weights alone).
Kernels that must match llama.cpp's float order live in `qdbg.numerics.kernels` (numba).
"""
