#!/usr/bin/env python3
"""torch.func references for `mscope ntk` (the tangent-kernel instrument).

    tools/.venv/bin/python tools/make_ntk_fixtures.py

Writes, under tests/fixtures/ntk/ (formats: README › Commands):

- train.safetensors: `x` F32 [12, 5] (standard normal, seed 0), `y` I64 [12] (every class of 3
  present); test.safetensors: `x` F32 [7, 5], `y` I64 [7] (seed 1).
- mlp_{act}.safetensors for act in relu, tanh, gelu, sigmoid: a 5-7-6-3 MLP classifier,
  `fc{i}.weight` F32 [out, in], `fc{i}.bias` F32 [out], metadata {"activation": act}. Each is
  torch.nn.Linear's default init under a fixed seed per activation, weights and biases ×2 so the
  activations are not all in their linear regime.
- mlp_{act}_reference.safetensors, all F64, computed in float64 from exactly the float32 values
  stored above:
    logits [12, 3], logits_test [7, 3];
    trntk, trntk0, pntk [12, 12] (train × train);
    trntk_test, trntk0_test, pntk_test [7, 12] (rows = test points, columns = train points);
    gradcos, embedding [12, 12] and gradcos_test, embedding_test [7, 12] (Engel et al.'s two
    baselines, below);
    grad_sq_norm [12] (‖g(x)‖² on train);
    jacobian [12, 3, P] (g_c(x) on train).

Definitions (what mscope must match):
- The MLP: y = W a + b per layer, the activation after every layer but the last, which gives
  the logits f_c, c = 1..C. gelu is the exact erf form (torch.nn.functional.gelu's default).
- g_c(x) = ∇θ f_c(x), flattened over the parameters in the order fc0.weight (row-major),
  fc0.bias, fc1.weight, fc1.bias, ...; P = 111 here.
- trNTK0(x, z) = Σ_c ⟨g_c(x), g_c(z)⟩;  ‖g(x)‖² = Σ_c ‖g_c(x)‖²;
  trNTK(x, z) = trNTK0(x, z) / (‖g(x)‖ ‖g(z)‖).
- pNTK(x, z) = (1/C) ⟨∇θ Σ_c f_c(x), ∇θ Σ_c f_c(z)⟩ (Mohamadi et al. 2023's scaling,
  not normalised).
- gradcos(x, z) = cos(∇θ L(x), ∇θ L(z)), L the cross-entropy of the logits at the point's own
  label (y of train.safetensors / test.safetensors), computed by torch.func.grad.
- embedding(x, z) = cos(h(x), h(z)), h the input and every hidden layer's activations side by
  side (an MLP's counterpart of transformers' hidden states: the embedding output and every
  layer's output; not the logits).

Per-sample Jacobians come from torch.func.vmap(torch.func.jacrev(...)) over
torch.func.functional_call; the kernels from einsum. The script checks the einsum kernels
against an explicit loop over the Jacobian for one pair, the Jacobian against plain autograd
for one sample, that trNTK's diagonal is 1, that every parameter has a non-zero gradient somewhere,
and (relu) that no pre-activation lies within 1e-3 of the kink; it fails loudly if any check misses.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.func import functional_call, jacrev, vmap

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "ntk"
SIZES = [5, 7, 6, 3]  # input, hidden..., classes
N_TRAIN, N_TEST = 12, 7
# relu's seed is the first from 10 up where no parameter has zero gradient on all 12 train points
# (with 12 points and 7 units most seeds leave a unit dead, which would test less).
SEEDS = {"relu": 83, "tanh": 11, "gelu": 12, "sigmoid": 13}
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu, "sigmoid": torch.sigmoid}


class MLP(torch.nn.Module):
    """fc0..fc{L-1} with `activation` after every layer but the last."""

    def __init__(self, sizes, activation):
        super().__init__()
        self.n_layers = len(sizes) - 1
        for i in range(self.n_layers):
            setattr(self, f"fc{i}", torch.nn.Linear(sizes[i], sizes[i + 1]))
        self.act = ACTIVATIONS[activation]

    def forward(self, x):
        for i in range(self.n_layers):
            x = getattr(self, f"fc{i}")(x)
            if i + 1 < self.n_layers:
                x = self.act(x)
        return x


def param_names(n_layers):
    """The flattening order of θ: fc0.weight, fc0.bias, fc1.weight, ..."""
    return [f"fc{i}.{kind}" for i in range(n_layers) for kind in ("weight", "bias")]


def make_model(act):
    """Default nn.Linear init under SEEDS[act], ×2, rounded to float32 (what gets stored)."""
    torch.manual_seed(SEEDS[act])
    model = MLP(SIZES, act)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}


def make_data(seed, n):
    """x standard normal (float32 as stored); y a seeded shuffle of 0,1,2,0,1,2,... (all present)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, SIZES[0], generator=gen, dtype=torch.float32)
    c = SIZES[-1]
    y = (torch.arange(n) % c)[torch.randperm(n, generator=gen)].to(torch.int64)
    assert set(y.tolist()) == set(range(c))
    return x, y


def jacobian(model, params, x):
    """Per-sample per-class flattened gradient g_c(x): [N, C, P], float64."""

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)  # [C]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)  # name -> [N, C, *shape]
    n, c = x.shape[0], SIZES[-1]
    return torch.cat([jac[k].reshape(n, c, -1) for k in param_names(model.n_layers)], dim=2)


def kernels(ja, jb):
    """trNTK0, trNTK, pNTK between the rows of ja [Na, C, P] and jb [Nb, C, P]."""
    c = ja.shape[1]
    trntk0 = torch.einsum("icp,jcp->ij", ja, jb)
    na = torch.einsum("icp,icp->i", ja, ja).sqrt()
    nb = torch.einsum("icp,icp->i", jb, jb).sqrt()
    trntk = trntk0 / (na[:, None] * nb[None, :])
    pntk = torch.einsum("ip,jp->ij", ja.sum(1), jb.sum(1)) / c
    return trntk0, trntk, pntk


def loss_gradients(model, params, x, y):
    """Per-sample flattened gradient of the cross-entropy at the point's own label: [N, P]."""

    def loss(p, xi, yi):
        logits = functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    grads = vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[k].reshape(x.shape[0], -1) for k in param_names(model.n_layers)], dim=1)


def hidden_states(model, params, x):
    """The input and every hidden layer's activations side by side: [N, Σ widths]."""
    states, a = [x], x
    for i in range(model.n_layers - 1):
        a = model.act(a @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"])
        states.append(a)
    return torch.cat(states, dim=1)


def cosine(a, b):
    """Cosine of every row of a [Na, K] with every row of b [Nb, K]."""
    return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])


def check(act, model, params, x_train, jac, trntk0, trntk, pntk, grad_sq):
    """Independent re-derivations; raise on any miss."""
    c = SIZES[-1]
    i, j = 3, 8
    t0 = sum(float(jac[i, k] @ jac[j, k]) for k in range(c))
    ni = sum(float(jac[i, k] @ jac[i, k]) for k in range(c)) ** 0.5
    nj = sum(float(jac[j, k] @ jac[j, k]) for k in range(c)) ** 0.5
    gi, gj = sum(jac[i, k] for k in range(c)), sum(jac[j, k] for k in range(c))
    p = float(gi @ gj) / c
    assert abs(t0 - float(trntk0[i, j])) <= 1e-12 * max(1.0, abs(t0)), (act, "trntk0 loop")
    assert abs(t0 / (ni * nj) - float(trntk[i, j])) <= 1e-12, (act, "trntk loop")
    assert abs(p - float(pntk[i, j])) <= 1e-12 * max(1.0, abs(p)), (act, "pntk loop")
    assert abs(ni * ni - float(grad_sq[i])) <= 1e-12 * max(1.0, ni * ni), (act, "grad_sq loop")
    diag = torch.diagonal(trntk)
    assert torch.allclose(diag, torch.ones_like(diag), rtol=0, atol=1e-13), (act, "trntk diagonal")
    # The Jacobian of one sample against plain reverse-mode autograd, class by class.
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    out = functional_call(model, leaves, (x_train[i : i + 1],)).squeeze(0)
    for k in range(c):
        grads = torch.autograd.grad(out[k], [leaves[n] for n in param_names(model.n_layers)], retain_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        assert torch.allclose(flat, jac[i, k], rtol=1e-12, atol=1e-14), (act, "jacobian vs autograd")
    # Every parameter is live in this fixture (no dead ReLU wiping a whole row of the Jacobian).
    assert bool((jac.abs().sum(dim=(0, 1)) > 0).all()), (act, "a parameter has zero gradient everywhere")


def min_abs_preactivation(params, x):
    """Smallest |pre-activation| of any hidden unit: ReLU's kink must be far from every point, or
    mscope's float32 forward pass could take the other side of it than this float64 reference."""
    n_layers = len(SIZES) - 1
    a, smallest = x, float("inf")
    for i in range(n_layers - 1):
        z = a @ params[f"fc{i}.weight"].T + params[f"fc{i}.bias"]
        smallest = min(smallest, float(z.abs().min()))
        a = torch.relu(z)
    return smallest


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x_train32, y_train = make_data(0, N_TRAIN)
    x_test32, y_test = make_data(1, N_TEST)
    save_file({"x": x_train32, "y": y_train}, OUT / "train.safetensors")
    save_file({"x": x_test32, "y": y_test}, OUT / "test.safetensors")
    x_train, x_test = x_train32.to(torch.float64), x_test32.to(torch.float64)

    for act in SEEDS:
        state32 = make_model(act)
        save_file(state32, OUT / f"mlp_{act}.safetensors", metadata={"activation": act})
        model = MLP(SIZES, act).to(torch.float64)
        params = {k: v.to(torch.float64) for k, v in state32.items()}
        with torch.no_grad():
            logits = functional_call(model, params, (x_train,))
            logits_test = functional_call(model, params, (x_test,))
        jac = jacobian(model, params, x_train)
        jac_test = jacobian(model, params, x_test)
        trntk0, trntk, pntk = kernels(jac, jac)
        trntk0_t, trntk_t, pntk_t = kernels(jac_test, jac)
        grad_sq = torch.einsum("icp,icp->i", jac, jac)
        check(act, model, params, x_train, jac, trntk0, trntk, pntk, grad_sq)
        loss_train = loss_gradients(model, params, x_train, y_train)
        loss_test = loss_gradients(model, params, x_test, y_test)
        # The loss gradient is the Jacobian seeded by softmax − one-hot.
        seeds = torch.softmax(logits, dim=1) - F.one_hot(y_train, SIZES[-1]).to(torch.float64)
        assert torch.allclose(torch.einsum("ic,icp->ip", seeds, jac), loss_train, rtol=1e-12, atol=1e-14), (
            act,
            "loss gradient vs Jacobian",
        )
        h_train, h_test = hidden_states(model, params, x_train), hidden_states(model, params, x_test)
        if act == "relu":
            kink = min(min_abs_preactivation(params, x_train), min_abs_preactivation(params, x_test))
            assert kink > 1e-3, (act, "a pre-activation is within 1e-3 of ReLU's kink", kink)
        ref = {
            "logits": logits,
            "logits_test": logits_test,
            "trntk": trntk,
            "trntk0": trntk0,
            "pntk": pntk,
            "trntk_test": trntk_t,
            "trntk0_test": trntk0_t,
            "pntk_test": pntk_t,
            "gradcos": cosine(loss_train, loss_train),
            "gradcos_test": cosine(loss_test, loss_train),
            "embedding": cosine(h_train, h_train),
            "embedding_test": cosine(h_test, h_train),
            "grad_sq_norm": grad_sq,
            "jacobian": jac,
        }
        ref = {k: v.detach().to(torch.float64).contiguous() for k, v in ref.items()}
        save_file(ref, OUT / f"mlp_{act}_reference.safetensors", metadata={"activation": act})
        off = trntk[~torch.eye(N_TRAIN, dtype=torch.bool)]
        print(
            f"{act:8s} P={jac.shape[2]} trNTK off-diag [{float(off.min()):+.3f}, {float(off.max()):+.3f}] "
            f"‖g‖² [{float(grad_sq.min()):.3g}, {float(grad_sq.max()):.3g}] "
            f"pNTK diag mean {float(torch.diagonal(pntk).mean()):.3g}"
        )
    total = sum(p.stat().st_size for p in OUT.glob("*.safetensors"))
    print(f"wrote {OUT} ({total} bytes of safetensors)")


if __name__ == "__main__":
    main()
