"""One torch thread for these tests: their models are tiny, and on a shared 2-core CI
machine two OpenMP threads per process spin against each other (a 16-step U-Net run
measured 11 s with one thread and 71 s with two while other tests ran beside it)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
