"""Shared test settings."""
import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests' models and matrices are small: they run fastest on one thread, above all while
    background jobs started by other tests share the cores."""
    before = torch.get_num_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)
