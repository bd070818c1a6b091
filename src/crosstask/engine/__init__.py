"""The one training loop and what it needs: method contract, optimizers, schedules, checkpoints, logging."""
