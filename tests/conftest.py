"""Shared test setup.

The reference implementations in ``reference.py`` are made importable, and
torch runs on one thread: the tensors here are tiny, and several test
processes share few cores.
"""

import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
torch.set_num_threads(1)
