"""RNNLM: the contract, scratch == PyTorch's fused layers, scratch == the primer's equations, state, generate."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from primer.errors import PrimerError
from primer.models.bptt import recurrence
from primer.models.rnn import RNNLM, generate, perplexity, scratch_to_fused_state_dict
from primer.text.corpus import Vocab, seq_data_iter_random, seq_data_iter_sequential
from primer.training.loop import make_optimizer

V, H, B, T = 7, 8, 3, 6
# The primer's gates in the order PyTorch stacks them: LSTM rows (i, f, g, o), GRU rows (r, z, n).
PYTORCH_ROWS = {"rnn": ["h"], "lstm": ["i", "f", "c", "o"], "gru": ["r", "z", "h"]}
RESET_GATE = ("W_xr", "W_hr", "b_r")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Step-by-step recurrences on tiny tensors run faster (and steadier) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(seed: int = 0, b: int = B, t: int = T):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (b, t), generator=g), torch.randint(0, V, (b, t), generator=g)


def scratch_model(cell: str, layers: int, std: float = 0.5, seed: int = 0) -> RNNLM:
    """A scratch model with weights and biases large enough that every nonlinearity matters."""
    torch.manual_seed(seed)
    model = RNNLM(V, cell, H, layers, impl="scratch")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model


def fused_copy(scratch: RNNLM) -> RNNLM:
    fused = RNNLM(V, scratch.cell, H, scratch.num_layers, impl="fused")
    fused.load_state_dict(scratch_to_fused_state_dict(scratch))  # strict: every key present and shaped
    return fused


def fused_grad_of(fused: RNNLM, name: str) -> torch.Tensor:
    """The fused gradient that corresponds to scratch parameter `name` (e.g. 'layers.1.W_xf', 'W_hq')."""
    if name == "W_hq":
        return fused.head.weight.grad.T
    if name == "b_q":
        return fused.head.bias.grad
    _, layer, param = name.split(".")
    gate = param[-1]
    k = PYTORCH_ROWS[fused.cell].index(gate)
    rows = slice(k * H, (k + 1) * H)
    kind = {"W_x": "weight_ih", "W_h": "weight_hh", "b_": "bias_ih"}[param[:-1]]
    grad = getattr(fused.rnn, f"{kind}_l{layer}").grad[rows]
    return grad if kind == "bias_ih" else grad.T


# --- the contract ---------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_logits_and_loss(impl, cell, layers):
    model = RNNLM(V, cell, H, layers, impl=impl)
    x, y = batch()
    logits, loss = model(x, y)
    assert logits.shape == (B, T, V) and loss.shape == ()
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)))
    assert model(x)[1] is None
    n_state = 2 if cell == "lstm" else 1
    assert len(model.state) == n_state and all(s.shape == (layers, B, H) for s in model.state)


def test_bad_constructor_arguments_raise_primer_error():
    with pytest.raises(PrimerError, match="'transformer'"):
        RNNLM(V, cell="transformer")
    with pytest.raises(PrimerError, match="'cudnn'"):
        RNNLM(V, impl="cudnn")
    with pytest.raises(PrimerError, match="num_layers=0"):
        RNNLM(V, num_layers=0)


# --- scratch against PyTorch's layers -------------------------------------------------------

def assert_same_logits_and_grads(scratch: RNNLM, fused: RNNLM, skip=()):
    x, y = batch(1)
    logits_s, loss_s = scratch(x, y)
    logits_f, loss_f = fused(x, y)
    assert torch.allclose(logits_s, logits_f, atol=1e-5, rtol=1e-4)
    loss_s.backward()
    loss_f.backward()
    checked = 0
    for name, p in scratch.named_parameters():
        if name.split(".")[-1] in skip:
            continue
        assert torch.allclose(p.grad, fused_grad_of(fused, name), atol=1e-5, rtol=1e-4), name
        checked += 1
    return checked


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
def test_scratch_equals_fused(cell, layers):
    scratch = scratch_model(cell, layers)
    checked = assert_same_logits_and_grads(scratch, fused_copy(scratch))
    assert checked == len(list(scratch.parameters()))


@pytest.mark.parametrize("layers", [1, 2])
def test_gru_scratch_and_fused_differ_only_in_where_the_reset_gate_acts(layers):
    """Primer: (R*H) W_hh; PyTorch: R*(H W_hh). Equal when R is one value for every unit, else not."""
    scratch = scratch_model("gru", layers)
    x, _ = batch(2)
    gap = (scratch(x)[0] - fused_copy(scratch)(x)[0]).abs().max()
    assert gap > 1e-2  # a genuinely different cell, not rounding
    with torch.no_grad():
        for layer in scratch.layers:
            layer.W_xr.zero_(), layer.W_hr.zero_(), layer.b_r.fill_(0.3)  # R = sigmoid(0.3) everywhere
    checked = assert_same_logits_and_grads(scratch, fused_copy(scratch), skip=RESET_GATE)
    assert checked == len(list(scratch.parameters())) - 3 * layers


# --- scratch against the primer's equations, written out step by step -----------------------

def primer_equations(model: RNNLM, x: torch.Tensor):
    """Logits (B, T, V) and final per-layer states, computed one time step and one gate at a time."""
    inputs = [F.one_hot(x[:, t], V).float() for t in range(x.shape[1])]  # T tensors (B, V)
    finals = []
    for layer in model.layers:
        p = {name: param for name, param in layer.named_parameters()}
        Hs = torch.zeros(x.shape[0], H)
        Cs = torch.zeros(x.shape[0], H)
        outputs = []
        for X in inputs:
            if model.cell == "rnn":
                Hs = torch.tanh(X @ p["W_xh"] + Hs @ p["W_hh"] + p["b_h"])
            elif model.cell == "lstm":
                I = torch.sigmoid(X @ p["W_xi"] + Hs @ p["W_hi"] + p["b_i"])  # noqa: E741 (the primer's gate names)
                Fg = torch.sigmoid(X @ p["W_xf"] + Hs @ p["W_hf"] + p["b_f"])
                O = torch.sigmoid(X @ p["W_xo"] + Hs @ p["W_ho"] + p["b_o"])  # noqa: E741
                C_tilde = torch.tanh(X @ p["W_xc"] + Hs @ p["W_hc"] + p["b_c"])
                Cs = Fg * Cs + I * C_tilde
                Hs = O * torch.tanh(Cs)
            else:
                Z = torch.sigmoid(X @ p["W_xz"] + Hs @ p["W_hz"] + p["b_z"])
                R = torch.sigmoid(X @ p["W_xr"] + Hs @ p["W_hr"] + p["b_r"])
                H_tilde = torch.tanh(X @ p["W_xh"] + (R * Hs) @ p["W_hh"] + p["b_h"])
                Hs = Z * Hs + (1 - Z) * H_tilde
            outputs.append(Hs)
        finals.append((Hs, Cs))
        inputs = outputs  # the next layer reads this layer's hidden states
    logits = torch.stack([Hs @ model.W_hq + model.b_q for Hs in inputs], dim=1)
    return logits, finals


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_scratch_follows_the_primer_equations(cell, layers):
    model = scratch_model(cell, layers)
    x, _ = batch(3)
    logits, _ = model(x)
    expected, finals = primer_equations(model, x)
    assert torch.allclose(logits, expected, atol=1e-5)
    for i, (h, c) in enumerate(finals):
        assert torch.allclose(model.state[0][i], h, atol=1e-5)
        if cell == "lstm":
            assert torch.allclose(model.state[1][i], c, atol=1e-5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_scratch_gradients_equal_autograd_through_the_primer_equations(cell, layers):
    """The hand-written backward (primer.models.bptt) against autograd on the step-by-step equations."""
    model = scratch_model(cell, layers)
    x, y = batch(6)
    weights = torch.randn(B, H, generator=torch.Generator().manual_seed(7))

    def loss_of(logits, final_h):  # the final state feeds the loss too, so its gradient path is checked
        return F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)) + (final_h * weights).sum()

    logits, _ = model(x)
    loss_of(logits, model_final_h(model, x)).backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected, finals = primer_equations(model, x)
    loss_of(expected, finals[-1][0]).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5, rtol=1e-4), n


def model_final_h(model: RNNLM, x: torch.Tensor) -> torch.Tensor:
    """The last layer's final hidden state, with its graph (RNNLM.state is detached)."""
    hs = x.T
    for layer in model.layers:
        hs, final = layer(hs, tuple(torch.zeros(x.shape[0], H) for _ in range(2 if model.cell == "lstm" else 1)))
    return final[0]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_hand_written_backward_passes_gradcheck(cell):
    """Numerical gradients in float64 for every input: projections, W_h and the initial state."""
    g = torch.Generator().manual_seed(8)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    gx = torch.randn(4, 2, gates * 3, dtype=torch.float64, generator=g).requires_grad_()
    W_h = (torch.randn(3, gates * 3, dtype=torch.float64, generator=g) * 0.7).requires_grad_()
    state = [torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
             for _ in range(2 if cell == "lstm" else 1)]

    def run(gx, W_h, *state):
        hs, final = recurrence(cell, gx, W_h, state)
        return (hs, *final)

    assert torch.autograd.gradcheck(run, (gx, W_h, *state))


def test_scratch_init_is_the_primers():
    torch.manual_seed(0)
    model = RNNLM(40, "lstm", 64, 2, impl="scratch")
    biases = [p for n, p in model.named_parameters() if n.split(".")[-1].startswith("b_")]
    weights = torch.cat([p.flatten() for n, p in model.named_parameters() if n.split(".")[-1].startswith("W_")])
    assert len(biases) == 4 * 2 + 1 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)
    assert abs(weights.std().item() - 0.01) < 5e-4 and abs(weights.mean().item()) < 5e-4
    # Same draws, in the same order, as the primer's get_lstm_params: per gate W_x then W_h, then W_hq.
    torch.manual_seed(1)
    model = RNNLM(V, "lstm", H, 1, impl="scratch")
    torch.manual_seed(1)
    for g in "ifoc":
        assert torch.equal(getattr(model.layers[0], f"W_x{g}"), torch.randn(V, H) * 0.01)
        assert torch.equal(getattr(model.layers[0], f"W_h{g}"), torch.randn(H, H) * 0.01)
    assert torch.equal(model.W_hq, torch.randn(H, V) * 0.01)


# --- hidden state across calls --------------------------------------------------------------

@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_carry_state_continues_the_sequence(impl, cell):
    model = scratch_model(cell, 2) if impl == "scratch" else RNNLM(V, cell, H, 2, impl="fused")
    x1, _ = batch(4)
    x2, y2 = batch(5)
    whole = model(torch.cat([x1, x2], dim=1))[0]  # (B, 2T) from a zero state
    fresh = model(x2)[0]  # carry_state is off: zero state again
    assert torch.allclose(model(x2)[0], fresh)
    model.carry_state = True
    model.reset_state()
    model(x1, y2)[1].backward()
    carried, loss = model(x2, y2)
    assert not torch.allclose(carried, fresh, atol=1e-4)
    assert torch.allclose(carried, whole[:, T:], atol=1e-5)
    loss.backward()  # would fail (graph of the first call already freed) if the carried state were attached
    assert all(not s.requires_grad and s.grad_fn is None for s in model.state)
    odd, _ = batch(6, b=B + 1)
    from_mismatch = model(odd)[0]  # the stored state has batch B, so this call starts from zeros
    model.carry_state = False
    assert torch.allclose(from_mismatch, model(odd)[0])


# --- generation -----------------------------------------------------------------------------

def greedy_by_hand(model: RNNLM, vocab: Vocab, prefix: str, n: int) -> str:
    """d2l's predict_ch8 restated: feed one character at a time, then feed back each argmax."""
    model.carry_state, model.state, out = True, None, prefix
    with torch.no_grad():
        for ch in prefix:
            logits, _ = model(torch.tensor([[vocab[ch]]]))
        for _ in range(n):
            out += vocab.to_tokens(int(logits[0, -1].argmax()))
            logits, _ = model(torch.tensor([[vocab[out[-1]]]]))
    return out


@pytest.mark.parametrize("impl", ["scratch", "fused"])
def test_generate_is_greedy_deterministic_and_leaves_the_model_as_it_was(impl):
    vocab = Vocab("time traveller")
    model = RNNLM(len(vocab), "lstm", 16, 2, impl=impl)
    with torch.no_grad():  # widen the logits so argmax moves around; <unk> (5 characters) never wins
        for p in model.parameters():
            p.normal_(0, 0.8)
        (model.b_q if impl == "scratch" else model.head.bias)[0] = -100.0
    model.carry_state = True
    model(torch.randint(0, len(vocab), (4, 5)))
    before = [s.clone() for s in model.state]
    out = generate(model, vocab, "time ", 20)
    assert len(out) == len("time ") + 20 and out.startswith("time ")
    assert out == generate(model, vocab, "time ", 20)
    assert model.carry_state is True and all(torch.equal(a, b) for a, b in zip(model.state, before))
    assert out == greedy_by_hand(model, vocab, "time ", 20)
    with pytest.raises(PrimerError, match="prefix"):
        generate(model, vocab, "", 5)


# --- learning -------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["scratch", "fused"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_few_sgd_steps_learn_a_repeated_pattern(impl, cell):
    vocab = Vocab("abcde")
    ids = torch.tensor(vocab.encode("abcde" * 9))
    x, y = ids[:-1].reshape(4, 11), ids[1:].reshape(4, 11)
    torch.manual_seed(0)
    model = RNNLM(len(vocab), cell, 16, 1, impl=impl)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    losses = []
    for _ in range(120):  # the primer's 0.01 init makes the scratch LSTM start slowly
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.5 and losses[-1] < 0.5  # from about ln(5) to confident
    assert generate(model, vocab, "abc", 7) == "abcdeabcde"


def test_dropout_between_layers_is_pytorchs_own_and_only_in_training():
    torch.manual_seed(0)
    model = RNNLM(10, "lstm", 16, 2, "fused", dropout=0.5)
    reference = torch.nn.LSTM(10, 16, 2, batch_first=True, dropout=0.5)
    reference.load_state_dict(model.rnn.state_dict())
    x = torch.randint(0, 10, (3, 7))
    model.eval()
    reference.eval()
    expected = model.head(reference(F.one_hot(x, 10).float())[0])
    assert torch.allclose(model(x)[0].reshape(expected.shape), expected, atol=1e-6)  # eval: no dropout, same function
    model.train()
    torch.manual_seed(1)
    a = model(x)[0]
    torch.manual_seed(2)
    assert not torch.allclose(a, model(x)[0])  # training: dropout between the two layers
    with pytest.raises(PrimerError, match="impl 'scratch' has no dropout"):
        RNNLM(10, "lstm", 16, 2, "scratch", dropout=0.5)


def perplexity_per_window(model: RNNLM, ids: torch.Tensor, num_steps: int) -> float:
    """The evaluation as it was: one stream at batch 1, windows of w read in order with the state carried."""
    model.reset_state()
    model.carry_state = True
    total, count = 0.0, 0
    w = max(1, min(num_steps * 8, (len(ids) - 1) // 2))
    for x, y in seq_data_iter_sequential(ids, 1, w, torch.Generator().manual_seed(0)):
        _, loss = model(x, y)
        total, count = total + loss.item() * y.numel(), count + y.numel()
    model.reset_state()
    model.carry_state = False
    return math.exp(total / count)


WORDS = ("the time traveller for so it will be convenient to speak of him "
         "was expounding a recondite matter to us").split()


@pytest.mark.parametrize(("cell", "impl"), [("lstm", "fused"), ("gru", "scratch"), ("rnn", "fused")])
def test_batched_perplexity_is_the_per_window_number(cell, impl):
    """Parallel streams with a warm-up give the single stream's perplexity (seen: 1e-7 relative on a model
    trained a little on The Time Machine; asserted at 1e-4)."""
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(4000))
    vocab = Vocab(text)
    ids = torch.tensor(vocab.encode(text))
    train, val = ids[:-3000], ids[-3000:]
    torch.manual_seed(0)
    model = RNNLM(len(vocab), cell, 32, 1, impl)
    optimizer = make_optimizer(model, "sgd", 1.0)
    for x, y in seq_data_iter_random(train, 16, 20, torch.Generator().manual_seed(0)):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    reference = perplexity_per_window(model, val, 20)
    assert reference < len(vocab) * 0.9  # it learned something: context matters to the number
    batched = perplexity(model, val, 20, torch.device("cpu"), streams=8)
    assert batched == pytest.approx(reference, rel=1e-4)
    assert perplexity(model, val, 20, torch.device("cpu"), streams=1) == pytest.approx(reference, rel=1e-5)
