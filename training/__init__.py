"""Waldo's training side: models, data, tasks, tracking and the `waldo` CLI.

This module stays torch-free so that `training.spec` can be imported by light processes
(the jobs API); import the subpackages for the heavy parts.
"""

__version__ = "0.1.0"
