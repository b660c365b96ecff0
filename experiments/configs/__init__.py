"""Config files for `experiments/train.py` (`--config=experiments/configs/<name>.py`)."""
