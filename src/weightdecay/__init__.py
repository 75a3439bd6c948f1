"""Decoupled weight decay (Loshchilov & Hutter, ICLR 2019), exact and fast.

``Adam`` and ``SGD`` regularize with L2 (the decay flows through the
gradient); ``AdamW`` and ``SGDW`` decay the weights directly, scaled by the
schedule multiplier ``eta_t = lr / initial_lr`` and not by ``alpha``.
"""

from weightdecay import decay, schedules
from weightdecay._base import WeightDecayUnitsWarning
from weightdecay.adam import Adam, AdamW
from weightdecay.decay import normalized_weight_decay, param_groups
from weightdecay.schedules import SGDWR, AdamWR, WarmRestarts
from weightdecay.sgd import SGD, SGDW

__all__ = [
    "SGD",
    "SGDW",
    "SGDWR",
    "Adam",
    "AdamW",
    "AdamWR",
    "WarmRestarts",
    "WeightDecayUnitsWarning",
    "decay",
    "normalized_weight_decay",
    "param_groups",
    "schedules",
]
__version__ = "0.1.0"
