from __future__ import annotations

import json

import pytest

from fedsllm.errors import WireError
from fedsllm.state.optim import optimizer_from_bytes, optimizer_to_bytes
from fedsllm.state.store import ClientStore, InMemoryBackend

torch = pytest.importorskip("torch")


def _model_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(model, opt, i: int) -> None:
    g = torch.Generator().manual_seed(i)
    x = torch.randn(5, 4, generator=g)
    opt.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    opt.step()


def test_restored_optimizer_continues_exactly() -> None:
    """Three steps, a checkpoint through ClientStore, three more: the same bits as six."""
    ref_model, ref_opt = _model_and_opt()
    for i in range(6):
        _step(ref_model, ref_opt, i)

    model, opt = _model_and_opt()
    for i in range(3):
        _step(model, opt, i)
    from safetensors.torch import save

    store = ClientStore(InMemoryBackend())
    store.save(2, save(dict(model.state_dict())), optimizer_to_bytes(opt.state_dict()))

    snap = store.load()
    from safetensors.torch import load

    model2, opt2 = _model_and_opt(seed=1)  # a fresh process: other initial weights
    model2.load_state_dict(load(snap.adapter))
    opt2.load_state_dict(optimizer_from_bytes(snap.optimizer))
    for i in range(3, 6):
        _step(model2, opt2, i)
    for a, b in zip(ref_model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_empty_optimizer_state_round_trips() -> None:
    _, opt = _model_and_opt()
    back = optimizer_from_bytes(optimizer_to_bytes(opt.state_dict()))
    assert back["state"] == {}
    # JSON gives tuples back as lists (betas); load_state_dict takes either
    assert back["param_groups"] == json.loads(json.dumps(opt.state_dict()["param_groups"]))
    opt.load_state_dict(back)


@pytest.mark.parametrize("blob", [b"junk", None])
def test_not_an_optimizer_state_is_a_wire_error(blob) -> None:
    if blob is None:
        from safetensors.torch import save

        blob = save({"w": torch.zeros(2)})
    with pytest.raises(WireError, match="optimizer"):
        optimizer_from_bytes(blob)
