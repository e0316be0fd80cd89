"""Backpropagation through time written out by hand for the primer's RNN, LSTM and GRU cells.

`recurrence(cell, gx, W_h, state)` runs one scratch layer over time: `gx` (T, B, G*H) holds the
input projections X W_x + b of every step (gates in `rnn.GATES` order), `W_h` (H, G*H) the stacked
recurrent weights. Forward is the primer's equations, one matmul per step for every gate (two for
GRU, whose reset gate acts before W_hh). Backward walks the steps in reverse with one matmul per
step for the hidden-state gradient (two for GRU) and then forms dW_h for all steps in a single
(H, T*B) x (T*B, G*H) matmul, instead of the T small outer products autograd would record. This is
the layout PyTorch's fused CPU kernels use; the arithmetic is the primer's.
"""

from __future__ import annotations

import torch


def _rnn_forward(gx, W_h, state):
    (h0,) = state
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[-1]
    hs = gx.new_empty(T + 1, B, H)  # hs[0] = H_0, hs[t+1] = H_t
    hs[0] = h0
    for t in range(T):
        torch.tanh(torch.addmm(gx[t], hs[t], W_h), out=hs[t + 1])  # H = tanh(X W_xh + H W_hh + b_h)
    return hs, (hs[-1].clone(),), (hs,)


def _rnn_backward(W_h, saved, d_out, d_final):
    (hs,) = saved
    dh_next = d_final[0]
    da = torch.empty_like(d_out)
    W_hT = W_h.T.contiguous()  # a contiguous copy: ~25% faster per-step matmul than the transposed view
    for t in range(d_out.shape[0] - 1, -1, -1):
        h = hs[t + 1]
        torch.mul(d_out[t] + dh_next, 1 - h * h, out=da[t])  # through tanh
        dh_next = da[t] @ W_hT
    return da, [(hs[:-1], slice(None))], (dh_next,)


def _lstm_forward(gx, W_h, state):
    h0, c0 = state
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[-1]
    acts = gx.new_empty(T, B, 4 * H)  # per step: I, F, O (sigmoid) and C~ (tanh), the primer's order
    hs, cs = gx.new_empty(T + 1, B, H), gx.new_empty(T + 1, B, H)
    tanh_cs = gx.new_empty(T, B, H)  # tanh(C) per step, kept for the backward pass
    hs[0], cs[0] = h0, c0
    for t in range(T):
        a = torch.addmm(gx[t], hs[t], W_h)
        torch.sigmoid(a[:, :3 * H], out=acts[t, :, :3 * H])
        torch.tanh(a[:, 3 * H:], out=acts[t, :, 3 * H:])
        i, f, o, c_tilde = acts[t].chunk(4, dim=1)
        torch.addcmul(f * cs[t], i, c_tilde, out=cs[t + 1])  # C = F * C + I * C~
        torch.mul(o, torch.tanh(cs[t + 1], out=tanh_cs[t]), out=hs[t + 1])  # H = O * tanh(C)
    return hs, (hs[-1].clone(), cs[-1].clone()), (hs, cs, tanh_cs, acts)


def _lstm_backward(W_h, saved, d_out, d_final):
    hs, cs, tanh_cs, acts = saved
    dh_next, dc_next = d_final
    da = torch.empty_like(acts)
    W_hT = W_h.T.contiguous()  # a contiguous copy: ~25% faster per-step matmul than the transposed view
    for t in range(d_out.shape[0] - 1, -1, -1):
        i, f, o, c_tilde = acts[t].chunk(4, dim=1)
        di, df, do, dc_tilde = da[t].chunk(4, dim=1)
        dh = d_out[t] + dh_next
        tc = tanh_cs[t]
        dc = torch.addcmul(dc_next, dh * o, 1 - tc * tc)
        torch.mul(dc * c_tilde, i * (1 - i), out=di)
        torch.mul(dc * cs[t], f * (1 - f), out=df)
        torch.mul(dh * tc, o * (1 - o), out=do)
        torch.mul(dc * i, 1 - c_tilde * c_tilde, out=dc_tilde)
        dc_next = dc * f
        dh_next = da[t] @ W_hT
    return da, [(hs[:-1], slice(None))], (dh_next, dc_next)


def _gru_forward(gx, W_h, state):
    (h0,) = state
    T, B, H = gx.shape[0], gx.shape[1], h0.shape[-1]
    zr = gx.new_empty(T, B, 2 * H)  # update gate Z and reset gate R, per step
    h_tilde = gx.new_empty(T, B, H)
    hs = gx.new_empty(T + 1, B, H)
    hs[0] = h0
    W_zr, W_hh = W_h[:, :2 * H], W_h[:, 2 * H:]
    for t in range(T):
        torch.sigmoid(torch.addmm(gx[t, :, :2 * H], hs[t], W_zr), out=zr[t])
        z, r = zr[t].chunk(2, dim=1)
        torch.tanh(torch.addmm(gx[t, :, 2 * H:], r * hs[t], W_hh), out=h_tilde[t])  # R resets H before W_hh
        torch.addcmul(h_tilde[t], z, hs[t] - h_tilde[t], out=hs[t + 1])  # H = Z * H + (1 - Z) * H~
    return hs, (hs[-1].clone(),), (hs, zr, h_tilde)


def _gru_backward(W_h, saved, d_out, d_final):
    hs, zr, h_tilde = saved
    H = hs.shape[-1]
    dh_next = d_final[0]
    da = d_out.new_empty(d_out.shape[0], d_out.shape[1], 3 * H)  # dZ, dR, dH~ pre-activations
    W_zrT, W_hhT = W_h[:, :2 * H].T.contiguous(), W_h[:, 2 * H:].T.contiguous()
    for t in range(d_out.shape[0] - 1, -1, -1):
        z, r = zr[t].chunk(2, dim=1)
        dz, dr, dht = da[t].chunk(3, dim=1)
        h, ht = hs[t], h_tilde[t]
        dh = d_out[t] + dh_next
        torch.mul(dh * (1 - z), 1 - ht * ht, out=dht)
        drh = dht @ W_hhT  # gradient of R * H
        torch.mul(dh * (h - ht), z * (1 - z), out=dz)
        torch.mul(drh * h, r * (1 - r), out=dr)
        dh_next = torch.addmm(dh * z + drh * r, da[t, :, :2 * H], W_zrT)
    rh = zr[..., H:] * hs[:-1]  # what W_hh multiplied at each step
    return da, [(hs[:-1], slice(0, 2 * H)), (rh, slice(2 * H, 3 * H))], (dh_next,)


_CELLS = {"rnn": (_rnn_forward, _rnn_backward), "lstm": (_lstm_forward, _lstm_backward),
          "gru": (_gru_forward, _gru_backward)}


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, gx, W_h, *state):
        forward, _ = _CELLS[cell]
        hs, final, saved = forward(gx, W_h, state)  # autograd does not record inside forward
        ctx.cell = cell
        ctx.save_for_backward(W_h, *saved)
        return (hs[1:], *final)

    @staticmethod
    def backward(ctx, d_out, *d_final):
        W_h, *saved = ctx.saved_tensors
        _, backward = _CELLS[ctx.cell]
        d_pre, weight_parts, d_state = backward(W_h, saved, d_out, d_final)
        d_W_h = torch.empty_like(W_h)
        for inputs, cols in weight_parts:  # dW_h for every step at once
            d_W_h[:, cols] = inputs.flatten(0, 1).T @ d_pre[..., cols].flatten(0, 1)
        return (None, d_pre, d_W_h, *d_state)


def recurrence(cell: str, gx: torch.Tensor, W_h: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """(T, B, G*H) input projections, (H, G*H) W_h, state (H,) or (H, C) of (B, H) -> ((T, B, H), final state)."""
    hs, *final = _Recurrence.apply(cell, gx, W_h, *state)
    return hs, tuple(final)
