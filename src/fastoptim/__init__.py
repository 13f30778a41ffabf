"""fastoptim: torch.optim as a drop-in replacement, at the memory-bandwidth limit.

``import fastoptim as optim`` in place of ``import torch.optim as optim``.
"""

from .algorithms.adam import Adam, AdamW
from .algorithms.asgd import ASGD
from .algorithms.nadam import NAdam
from .algorithms.radam import RAdam
from .algorithms.sgd import SGD
from .optimizer import Optimizer, register_optimizer_step_post_hook, register_optimizer_step_pre_hook

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "Adam",
    "AdamW",
    "NAdam",
    "Optimizer",
    "RAdam",
    "SGD",
    "lr_scheduler",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "swa_utils",
]
