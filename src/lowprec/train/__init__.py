"""Training in a recipe's arithmetic: QuantSpec/Recipe and presets, prepare/unprepare,
optimizer wrapping, packed saved tensors, data parallelism. Imports lowprec.numerics."""
