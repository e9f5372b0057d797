"""Model artefacts: the ONNX model and its metadata, the registry and validation gate, the model card,
the training reference distributions and the quality metrics shared by training and live monitoring."""
