"""Fixtures shared by the engine tests."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP's spinning stalls when test runs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
