"""Backbones, heads and the models our users build: transfer and multi-task."""
