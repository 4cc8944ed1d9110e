"""Workflows that drive the core: benchmark matrices, fitting timestep weights, leaderboards and
regression checks. Nothing in the core imports this package."""
