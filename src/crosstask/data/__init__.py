"""Tasks, domains, datasets and the streams that feed the trainer."""
