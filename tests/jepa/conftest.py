import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests use tiny tensors, where intra-op threads only add synchronisation; on a
    busy 2-core box OpenMP spin-waiting made the folder ~8x slower (110 s instead of 14 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
