"""Pretraining and fine-tuning (Methods 4.2.3, 4.3, 4.6): config, batches, the loop, fine-tuning."""

from .config import TrainConfig, load_config
from .finetune import finetune
from .loop import Trainer, pretrain

__all__ = ["TrainConfig", "load_config", "Trainer", "pretrain", "finetune"]
