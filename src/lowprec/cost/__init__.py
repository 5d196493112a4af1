"""Modelled hardware cost of a recipe: energy per operation, traffic, storage.
Imports lowprec.numerics and lowprec.train."""
