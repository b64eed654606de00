"""Fine-tuning: rendered pairs -> token ids -> LoRA (or full) training -> a servable folder."""

from padellm_ner.train.dataset import TokenizedPair, collate, encode_pair, encode_pairs, plan_epoch
from padellm_ner.train.trainer import TrainConfig, Trainer, TrainResult, latest_checkpoint

__all__ = [
    "TokenizedPair",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "collate",
    "encode_pair",
    "encode_pairs",
    "latest_checkpoint",
    "plan_epoch",
]
