"""Simulation on Flower's engine (Ray), progress lines, comparison sweeps and reports."""
