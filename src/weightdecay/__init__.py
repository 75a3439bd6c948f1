"""Decoupled weight decay (Loshchilov & Hutter, ICLR 2019), exact and fast."""

from weightdecay import decay
from weightdecay.decay import normalized_weight_decay, param_groups

__all__ = ["decay", "normalized_weight_decay", "param_groups"]
__version__ = "0.1.0"
