"""The training monitor and its verdict: what a loop calls to see inside its model.

    from tools.monitor import TrainingMonitor
"""
from tools.monitor.training_monitor import TrainingMonitor

__all__ = ["TrainingMonitor"]
