"""Training LoRA adapters on chat data, and scoring them by held-out exact match."""

from adapterkit.training.data import ChatExample, load_jsonl, write_jsonl
from adapterkit.training.distributed import ReplicaGroup
from adapterkit.training.errors import ChatTemplateError, CheckpointError, TrainingDataError
from adapterkit.training.evaluate import EvalResult, exact_match, generate_responses
from adapterkit.training.tasks import TASK_NAMES, Task, make_task, recommended_lora_config
from adapterkit.training.trainer import TrainConfig, TrainResult, train

__all__ = [
    "TASK_NAMES",
    "ChatExample",
    "ChatTemplateError",
    "CheckpointError",
    "EvalResult",
    "ReplicaGroup",
    "Task",
    "TrainConfig",
    "TrainResult",
    "TrainingDataError",
    "exact_match",
    "generate_responses",
    "load_jsonl",
    "make_task",
    "recommended_lora_config",
    "train",
    "write_jsonl",
]
