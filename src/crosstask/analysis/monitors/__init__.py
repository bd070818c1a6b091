"""Monitors: diagnostics that read a run's steps through the Trainer's events (``train.monitors``)."""
