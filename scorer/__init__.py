"""scorer: a real-time streaming fraud scorer (Kafka in, decisions out, ONNX in-process)."""

__version__ = "0.1.0"
