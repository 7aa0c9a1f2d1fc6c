"""One torch thread per test: tiny models gain nothing from two, and on a shared, loaded machine thread
oversubscription made a 24-token tiny-model decode 15x slower."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
