import torch
from torch import nn

from jepa.ema import ema_update


def test_ema_arithmetic_is_exact():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        online.weight.fill_(2.0), online.bias.fill_(-4.0)
        target.weight.fill_(1.0), target.bias.fill_(8.0)
    ema_update(target, online, momentum=0.75)  # values chosen so float arithmetic is exact
    assert torch.equal(target.weight, torch.full((2, 3), 0.75 * 1.0 + 0.25 * 2.0))
    assert torch.equal(target.bias, torch.full((2,), 0.75 * 8.0 + 0.25 * -4.0))
    assert torch.equal(online.weight, torch.full((2, 3), 2.0))


def test_ema_matches_formula_on_random_weights():
    torch.manual_seed(0)
    online, target = nn.Linear(8, 8), nn.Linear(8, 8)
    m = 0.99925
    pairs = zip(target.parameters(), online.parameters())
    expected = [t.detach() * m + o.detach() * (1 - m) for t, o in pairs]
    ema_update(target, online, m)
    for t, e in zip(target.parameters(), expected):
        assert torch.allclose(t, e, rtol=0, atol=1e-7)
        assert t.grad is None


def test_momentum_one_freezes_and_zero_copies():
    online, target = nn.Linear(4, 4), nn.Linear(4, 4)
    before = target.weight.clone()
    ema_update(target, online, 1.0)
    assert torch.equal(target.weight, before)
    ema_update(target, online, 0.0)
    assert torch.equal(target.weight, online.weight)
