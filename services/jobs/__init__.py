"""The control plane: a FastAPI app that submits train, sweep and export jobs to Ray."""
