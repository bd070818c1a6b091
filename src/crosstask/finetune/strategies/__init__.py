"""Fine-tuning strategies of ``erm`` (``method.finetune``): which parameters train, and when. One file each."""
