"""Model sizes, seeding, and the transformer's last-query shortcut against a full-sequence computation."""

import math

import pytest
import torch

from hessian_book.models import ModAddMLP, ModAddTransformer, lenet_tiny, n_parameters, parameter_groups


def test_parameter_counts():
    assert n_parameters(lenet_tiny()) == 5994
    assert n_parameters(ModAddTransformer(p=113, d_model=32)) == 11_456
    width, p = 128, 97
    assert n_parameters(ModAddMLP(p=p, depth=3, width=width)) == (2 * p + 1) * width + 2 * (width + 1) * width \
        + (width + 1) * p
    groups = parameter_groups(lenet_tiny())
    assert [name for name, _ in groups][:2] == ["0.weight", "0.bias"] and groups[-1][1].stop == 5994


def test_seeded_models_are_reproducible_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = lenet_tiny(seed=3), lenet_tiny(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a.parameters(), b.parameters()))
    c = ModAddMLP(seed=1)
    assert not torch.equal(c.layers[0].weight, ModAddMLP(seed=2).layers[0].weight)


@pytest.mark.parametrize("n_heads, d_mlp", [(1, None), (4, 16)])
def test_transformer_last_query_equals_full_attention(n_heads, d_mlp):
    p, d = 11, 16
    model = ModAddTransformer(p=p, d_model=d, n_heads=n_heads, d_mlp=d_mlp, seed=0).double()
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], 1)
    # Independent computation: attention for all three queries, then read position 2 (it attends to 0..2).
    x = model.W_E[tokens] + model.W_pos
    dh = d // n_heads
    q = (x @ model.W_Q).view(-1, 3, n_heads, dh)
    k = (x @ model.W_K).view(-1, 3, n_heads, dh)
    v = (x @ model.W_V).view(-1, 3, n_heads, dh)
    att = torch.softmax(torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dh), -1)
    z = torch.einsum("nhqk,nkhd->nqhd", att, v).reshape(-1, 3, d)
    resid = (x + z @ model.W_O)[:, 2]
    if d_mlp:
        resid = resid + torch.relu(resid @ model.W_in + model.b_in) @ model.W_out + model.b_out
    torch.testing.assert_close(model(tokens), resid @ model.W_U)


def test_bad_model_parameters_are_named():
    with pytest.raises(ValueError, match="n_heads"):
        ModAddTransformer(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="depth"):
        ModAddMLP(depth=0)
    with pytest.raises(ValueError, match="input_encoding"):
        ModAddMLP(input_encoding="float")
