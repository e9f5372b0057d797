"""Demos and simulated sources: the offline demo, the live demo, `scorer stream`, the embedded broker."""
