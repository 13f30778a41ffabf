"""fastoptim: torch.optim as a drop-in replacement, at the memory-bandwidth limit.

``import fastoptim as optim`` in place of ``import torch.optim as optim``.
"""

from .algorithms.adadelta import Adadelta
from .algorithms.adafactor import Adafactor
from .algorithms.adagrad import Adagrad
from .algorithms.adam import Adam, AdamW
from .algorithms.adamax import Adamax
from .algorithms.adan import Adan
from .algorithms.asgd import ASGD
from .algorithms.lamb import Lamb
from .algorithms.lars import LARS
from .algorithms.lbfgs import LBFGS
from .algorithms.lion import Lion
from .algorithms.muon import Muon
from .algorithms.nadam import NAdam
from .algorithms.radam import RAdam
from .algorithms.rmsprop import RMSprop
from .algorithms.rprop import Rprop
from .algorithms.schedule_free import AdamWScheduleFree, SGDScheduleFree
from .algorithms.sgd import SGD
from .algorithms.sparse_adam import SparseAdam
from . import checkpoint, lr_scheduler, param_groups, swa_utils  # noqa: F401  (submodules; lr_scheduler and swa_utils as in torch.optim)
from .optimizer import Optimizer, register_optimizer_step_post_hook, register_optimizer_step_pre_hook

__version__ = "0.1.0"

__all__ = [
    "ASGD",
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "AdamWScheduleFree",
    "Adamax",
    "Adan",
    "LARS",
    "Lamb",
    "LBFGS",
    "Lion",
    "Muon",
    "NAdam",
    "Optimizer",
    "RAdam",
    "Rprop",
    "RMSprop",
    "SGD",
    "SGDScheduleFree",
    "SparseAdam",
    "checkpoint",
    "lr_scheduler",
    "param_groups",
    "register_optimizer_step_post_hook",
    "register_optimizer_step_pre_hook",
    "swa_utils",
]
