"""Waldo's inference service: FastAPI on ONNX Runtime. Never imports torch."""
