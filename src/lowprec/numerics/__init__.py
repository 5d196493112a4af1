"""Numbers: formats, presets, rounding modes, the rounding kernel, scaling, quantize,
telemetry and power-of-two products. Imports torch and numpy only."""
