"""Waldo's control plane (jobs API). Imports only `training.spec` from training."""
