"""Diagnostics: negative transfer, gradient conflict, task affinity and grouping, transferability, domain
distance. Monitors read a run's steps through the Trainer's events (no second training loop); the rest are
functions of run directories, features or matrices."""
