"""Settings shared by the whole suite."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # the models under test are small: one thread is faster and steadier on a 2-core machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
