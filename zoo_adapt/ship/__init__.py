"""Using and shipping a trained model: the safetensors export and its header,
evaluation and prediction from an export, the error analysis, ONNX, the model card
and the upload to the Hugging Face Hub."""
