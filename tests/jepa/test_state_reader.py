import math

import numpy as np
import pytest
import torch

from jepa.state_reader import StateReader, state_distance, wrap_angle


def angle_tokens(qpos: torch.Tensor, num_tokens: int = 4, dim: int = 8) -> torch.Tensor:
    """Tokens that show a two-link arm: each token holds the links' sin/cos at its own gain."""
    links = qpos.cumsum(-1)
    feats = torch.cat([links.sin(), links.cos()], -1)  # (B, 4)
    gains = torch.linspace(0.5, 1.5, num_tokens)[:, None]
    tokens = (gains * feats[:, None, :]).repeat(1, 1, dim // 4)
    return tokens + 0.01 * torch.randn_like(tokens)


def test_a_reader_whose_output_is_its_target_gives_back_the_angles():
    """sin/cos of the links in, joint angles out: the wrist is the difference of two links, wrapped."""
    reader = StateReader(4, 8, 2, angular=True)
    q = torch.tensor([[0.3, -2.9], [3.0, 3.0], [-1.0, 0.5]])
    reader.raw = lambda tokens: reader.target(q)
    torch.testing.assert_close(reader(None), wrap_angle(q))
    assert state_distance(reader(None), q + 2 * math.pi, angular=True).max() < 1e-5


def test_the_reader_learns_angles_from_tokens_and_survives_a_save():
    torch.manual_seed(0)
    q = (torch.rand(512, 2) * 2 - 1) * math.pi
    tokens = angle_tokens(q)
    reader = StateReader(4, 8, 2, angular=True, dim=32, depth=1, num_heads=2)
    untrained = state_distance(reader(tokens[-64:]).detach(), q[-64:], angular=True).median()
    opt = torch.optim.AdamW(reader.parameters(), 3e-3)
    for _ in range(300):
        idx = torch.randint(448, (64,))
        loss = reader.loss(tokens[idx], q[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    reader.eval()
    with torch.no_grad():
        held_out = state_distance(reader(tokens[-64:]), q[-64:], angular=True).median()
    assert held_out < 0.15 < untrained
    copy = StateReader(**reader.spec())
    copy.load_state_dict(reader.state_dict())
    torch.testing.assert_close(copy.eval()(tokens[:8]), reader(tokens[:8]))


def test_positions_are_standardised_and_not_wrapped():
    reader = StateReader(4, 8, 2, angular=False)
    reader.qpos_mean.copy_(torch.tensor([0.1, -0.2]))
    reader.qpos_std.copy_(torch.tensor([0.5, 2.0]))
    q = torch.tensor([[4.0, -7.0]])
    reader.raw = lambda tokens: reader.target(q)
    torch.testing.assert_close(reader(None), q)
    assert state_distance(q, q + torch.tensor([[2 * math.pi, 0.0]]), angular=False).item() == pytest.approx(2 * np.pi)
