"""The study's tooling: data sets, models and solvers, runs, sweeps and reports."""
