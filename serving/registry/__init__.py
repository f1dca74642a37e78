"""The MLflow model registry as Waldo uses it: who moved which alias when and why (moves), the
rollout policy every replica reads (policy), and the client helpers both share (client).

Torch-free, and mlflow is imported only inside functions, so importing this package is cheap.
"""
