"""Settings shared by the whole suite."""

import os
import sys

import pytest
import torch

# the shared helpers beside this file (analytic models, model variants, damaged files)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    # the models under test are small: one thread is faster and steadier on a 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
