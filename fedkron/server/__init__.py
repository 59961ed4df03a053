"""Flower ServerApp: build the model, run the strategy, evaluate centrally, write results."""
