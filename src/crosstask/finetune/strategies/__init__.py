"""Fine-tuning strategies (``method.finetune`` of erm and every adaptation method): which parameters train, and when. One file each."""
