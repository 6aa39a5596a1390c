import numpy as np
import pytest
import torch

from jepa.transforms import IMAGENET_MEAN, IMAGENET_STD, clips_to_tensor


def test_layout_and_normalisation():
    clips = np.zeros((2, 4, 8, 6, 3), dtype=np.uint8)
    clips[..., 0] = 255
    x = clips_to_tensor(clips, "cpu")
    assert x.shape == (2, 3, 4, 8, 6) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.tensor((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]))
    assert torch.allclose(x[:, 2], torch.tensor(-IMAGENET_MEAN[2] / IMAGENET_STD[2]))
    assert torch.equal(clips_to_tensor(torch.from_numpy(clips)), x)


def test_rejects_float_or_wrong_layout():
    with pytest.raises(ValueError, match="uint8"):
        clips_to_tensor(np.zeros((1, 2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        clips_to_tensor(np.zeros((1, 3, 2, 4, 4), dtype=np.uint8))
