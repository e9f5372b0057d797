"""Offline: the simulator, history replay through the feature engine, training and evaluation."""
