import pytest
import torch
import torch.nn.functional as F

from jepa.objective import feature_std, jepa_loss, laplace_nll


def test_loss_is_l1_to_layer_normed_targets():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 16), torch.randn(2, 5, 16) * 3 + 1
    expected = (pred - F.layer_norm(target, (16,))).abs().mean()
    assert torch.allclose(jepa_loss(pred, target), expected)
    # scale and offset of the targets do not matter, only their per-token shape
    assert torch.allclose(jepa_loss(pred, target * 7 - 2), expected, atol=1e-5)


def test_mse_loss_is_squared_error_to_layer_normed_targets():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 16), torch.randn(2, 5, 16) * 3 + 1
    expected = (pred - F.layer_norm(target, (16,))).square().mean()
    assert torch.allclose(jepa_loss(pred, target, "mse"), expected)
    with pytest.raises(ValueError, match="l1 or mse"):
        jepa_loss(pred, target, "huber")


def test_loss_zero_at_normalized_targets():
    target = torch.randn(1, 3, 8)
    assert jepa_loss(F.layer_norm(target, (8,)), target).item() < 1e-6


def test_feature_std_detects_collapse():
    collapsed = torch.randn(1, 1, 32).expand(4, 10, 32)
    assert feature_std(collapsed).item() == 0.0
    healthy = F.layer_norm(torch.randn(4, 10, 32), (32,))
    assert 0.8 < feature_std(healthy).item() < 1.2


def test_laplace_nll_is_least_where_the_scale_is_the_error():
    error = torch.tensor([0.2, 1.5])
    scales = torch.linspace(0.05, 3.0, 296)
    nll = laplace_nll(error[:, None], scales.log()[None])  # (2 errors, 296 scales)
    assert torch.allclose(scales[nll.argmin(dim=1)], error, atol=0.01)
