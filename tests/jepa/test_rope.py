import math

import pytest
import torch

from jepa.rope import apply_rope, axis_dim, grid_positions, rope_frequencies, rope_tables, rotate, rotation


def test_axis_split_of_reference_heads():
    # ViT-L/g heads of 64 -> 3 x 20 rotated + 4 free; ViT-H 80 -> 3 x 26 + 2; predictor 32 -> 3 x 10 + 2
    assert [axis_dim(d) for d in (64, 80, 32, 6, 5)] == [20, 26, 10, 2, 0]


def test_frequencies_match_formula():
    omega = rope_frequencies(20)
    assert omega.shape == (10,)
    assert omega[0] == 1.0
    assert math.isclose(omega[3].item(), 10000 ** (-3 / 10), rel_tol=1e-6)


def test_grid_positions_are_t_h_w():
    ids = torch.tensor([0, 5, 2 * 12 + 1 * 4 + 3])
    assert grid_positions(ids, (2, 3, 4)).tolist() == [[0, 0, 0], [0, 1, 1], [2, 1, 3]]


def _rope_by_hand(x, pos, head_dim):
    """Reference formula element by element: dim j of an axis chunk of size d turns at
    omega[j mod d/2], pairs (2i, 2i+1) are rotated together."""
    d = axis_dim(head_dim)
    omega = [10000 ** (-j / (d / 2)) for j in range(d // 2)]
    out = x.clone()
    for axis in range(3):
        for j in range(d):
            k = axis * d + j
            partner = -x[k + 1] if j % 2 == 0 else x[k - 1]
            angle = pos[axis] * omega[j % (d // 2)]
            out[k] = x[k] * math.cos(angle) + partner * math.sin(angle)
    return out


def test_apply_rope_matches_hand_computation():
    head_dim, grid = 32, (4, 5, 6)
    x = torch.randn(1, 1, 3, head_dim, dtype=torch.float64)
    ids = torch.tensor([0, 37, 119])
    cos, sin = rope_tables(ids, grid, head_dim)
    got = apply_rope(x, cos.double(), sin.double())
    for n, pos in enumerate(grid_positions(ids, grid).tolist()):
        assert torch.allclose(got[0, 0, n], _rope_by_hand(x[0, 0, n], pos, head_dim), atol=1e-6)
    assert torch.equal(got[..., 30:], x[..., 30:])  # dims past 3 * axis_dim untouched


def test_position_zero_is_identity_and_axes_are_separate():
    x = torch.randn(1, 2, 2, 64)
    cos, sin = rope_tables(torch.tensor([0, 0]), (2, 4, 4), 64)
    assert torch.allclose(apply_rope(x, cos, sin), x)
    cos, sin = rope_tables(torch.tensor([0, 1]), (2, 4, 4), 64)  # token 1 only moves in w
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y[..., 1, :40], x[..., 1, :40])
    assert not torch.allclose(y[..., 1, 40:60], x[..., 1, 40:60])


def _scores(head_dim, ids_q, ids_k, grid=(8, 8, 8)):
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, head_dim, dtype=torch.float64)
    cq, sq = rope_tables(ids_q, grid, head_dim)
    ck, sk = rope_tables(ids_k, grid, head_dim)
    return (apply_rope(q, cq.double(), sq.double()) * apply_rope(k, ck.double(), sk.double())).sum().item()


def test_scores_depend_on_relative_offset_when_pairs_share_a_frequency():
    # With 2 dims per axis both dims of a pair turn at omega[0]: plain RoPE, shift-invariant scores.
    a = _scores(6, torch.tensor([0 * 64 + 1 * 8 + 2]), torch.tensor([1 * 64 + 3 * 8 + 2]))
    b = _scores(6, torch.tensor([4 * 64 + 2 * 8 + 5]), torch.tensor([5 * 64 + 4 * 8 + 5]))
    assert math.isclose(a, b, rel_tol=1e-6)  # float32 tables


def test_wider_heads_keep_the_reference_frequency_layout():
    # The reference repeats the d/2 angles instead of interleaving them (kept for checkpoint
    # compatibility), so pair (2i, 2i+1) turns at omega[2i mod d/2] and omega[2i+1 mod d/2].
    cos, _ = rope_tables(torch.tensor([3]), (1, 1, 8), 64)  # w = 3
    omega = rope_frequencies(20)
    w_chunk = cos[0, 0, 40:60]
    assert torch.allclose(w_chunk, torch.cos(3 * torch.cat((omega, omega))))
    one_apart = _scores(64, torch.tensor([1]), torch.tensor([2]))
    assert not math.isclose(one_apart, _scores(64, torch.tensor([5]), torch.tensor([6])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 32, 12, 11])
def test_folded_tables_rotate_bit_for_bit_as_the_plain_formula(head_dim, dtype):
    """`rotation` widens the tables and folds each pair's sign into sin; that must change no bit
    of the result (the blocks use it, checkpoints and goldens were made with the plain form)."""
    ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(0))
    cos, sin = rope_tables(ids, (8, 4, 4), head_dim)
    x = torch.randn(2, 3, 40, head_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    r = cos.shape[-1]
    xr = x[..., :r]
    swapped = torch.stack((-xr[..., 1::2], xr[..., 0::2]), dim=-1).flatten(-2)
    plain = torch.cat((xr * cos.to(dtype) + swapped * sin.to(dtype), x[..., r:]), dim=-1)
    assert torch.equal(rotate(x, *rotation(cos, sin, head_dim)), plain)

