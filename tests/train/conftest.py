import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine is small and shared: one intra-op thread avoids spin-waiting slowdowns of 10x or more."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
