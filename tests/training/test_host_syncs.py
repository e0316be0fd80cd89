"""A training step of each model family makes the host wait for nothing (issue 14).

Each family trains for a few steps through `primer.training.loop.fit` on its stage's own batches, on the CPU,
with `benchmarks/host_sync_probe.py`'s `HostSyncs` recording from the second step on (the first makes the per-device
constants) to the end of the epoch's last step: any `.item()` / Python value of a tensor, data-dependent
shape, tensor made from Python data or copy between devices fails the test. Logging windows and epoch
ends may read values back: `log_every` is set past the epoch here. Adam is built fused, as on CUDA
(`make_optimizer` picks it there). On a GPU, tests marked `gpu` check the same under CUDA's own sync
debug mode.
"""

from __future__ import annotations

import pytest
import torch

from primer.models.cnn import build_cnn
from primer.models.rnn import RNNLM
from primer.models.transformer import Seq2SeqTransformer
from primer.text.length_batches import bucketed_batches
from primer.training.lm_training import epoch_batches
from primer.training.loop import FitConfig, fit, make_optimizer
from primer.vision.augment_policy import AugmentPolicy
from primer.vision.image_batches import train_batches

from helpers.probes import probe

HostSyncs = probe("host_sync_probe").HostSyncs
CPU = torch.device("cpu")
EVERY = dict(crop_size=48, hflip=0.5, vflip=0.3, rotate_deg=15, brightness=0.5, contrast=0.3, saturation=0.4, hue=0.1,
             perspective=0.3, perspective_p=0.5, blur_kernel=5, cutout_size=8, cutout_count=2)


@pytest.fixture(autouse=True)
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def run(model, optimizer, batches, log_every=10**9, count=lambda x, y: len(x),
        unit="img") -> tuple[HostSyncs, list, list]:
    syncs = HostSyncs()
    fitted = fit(model, optimizer, syncs.watch(batches), lambda m, e: {"val/loss": 0.0},
                 FitConfig(1, grad_clip=1.0, log_every=log_every, unit=unit), count=count)
    return syncs, syncs.steps, [row["train/epoch_loss"] for row in fitted.history]


def cnn_case(log_every=10**9):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 56, 56, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % 2
    model = build_cnn("primer", 4).to(memory_format=torch.channels_last)
    policy = AugmentPolicy(**EVERY)
    batches = lambda epoch: train_batches(images, labels, 8, policy, 0, epoch, CPU, channels_last=True)  # noqa: E731
    return run(model, make_optimizer(model, "adam", 1e-3, fused=True), batches, log_every=log_every)


def test_a_cnn_step_waits_on_nothing():
    syncs, counted, _ = cnn_case()
    assert counted == 4 and not syncs.found


def test_the_check_can_fail():
    """The same run with a logging window every step reads the loss back: caught."""
    syncs, counted, _ = cnn_case(log_every=1)
    assert syncs.found["aten::_local_scalar_dense"] >= counted > 0
    with HostSyncs() as found:  # and each kind the check knows
        x = torch.randn(4)
        _ = (x > 0).nonzero(), torch.tensor([1.0]), float(x.sum()), x.to("meta")
    assert set(found.found) == {"aten::nonzero", "aten::lift_fresh", "aten::_local_scalar_dense", "aten::_to_copy"}


LM = {"batch_size": 4, "num_steps": 6}


@pytest.mark.parametrize("sampling", ["random", "sequential"])
@pytest.mark.parametrize(("cell", "impl"),
                         [("lstm", "fused"), ("lstm", "scratch"), ("gru", "scratch"), ("rnn", "fused")])
def test_a_language_model_step_waits_on_nothing(cell, impl, sampling):
    torch.manual_seed(0)
    ids = torch.randint(0, 12, (150,), generator=torch.Generator().manual_seed(2))
    model = RNNLM(12, cell, 16, 2 if impl == "scratch" else 1, impl)
    batches = epoch_batches(model, ids, sampling, **LM, seed=0, device=CPU)
    syncs, counted, _ = run(model, make_optimizer(model, "sgd", 1.0), batches, count=lambda x, y: x.numel(), unit="tok")
    assert counted >= 3 and not syncs.found


def test_a_transformer_step_waits_on_nothing():
    torch.manual_seed(0)
    src = torch.randint(4, 20, (40, 7), generator=torch.Generator().manual_seed(3))
    tgt = torch.randint(4, 22, (40, 6), generator=torch.Generator().manual_seed(4))
    src[::3, 5:], tgt[::4, 4:] = 1, 1  # padding
    model = Seq2SeqTransformer(20, 22, 16, 2, 32, 2, 0.1, 0.1)
    optimizer = make_optimizer(model, "adam", 1e-3, fused=True)
    syncs, counted, _ = run(model, optimizer, bucketed_batches(src, tgt, 8, 0, CPU, 1),
                            count=lambda x, y: (y != 1).sum(), unit="tok")
    assert counted == 4 and not syncs.found


def test_seeded_runs_give_the_same_losses():
    assert cnn_case()[2] == cnn_case()[2]


def test_device_gathered_lm_batches_are_the_samplers():
    """What the LM stage gathers from the device is what d2l's samplers (primer.text.corpus) give for the seed."""
    from primer.text.corpus import seq_data_iter_random, seq_data_iter_sequential

    ids = torch.randint(0, 12, (150,), generator=torch.Generator().manual_seed(2))
    for sampling, sampler in (("random", seq_data_iter_random), ("sequential", seq_data_iter_sequential)):
        model = RNNLM(12, "lstm", 8)
        ours = list(epoch_batches(model, ids, sampling, **LM, seed=5, device=CPU)(3))
        theirs = list(sampler(ids, 4, 6, torch.Generator().manual_seed(5 * 100_003 + 3)))
        assert len(ours) == len(theirs) > 0
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(ours, theirs))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_no_step_synchronises():
    """CUDA's own check: sync debug mode 'error' raises on any synchronising call inside the steps."""
    cuda = torch.device("cuda")
    images = torch.randint(0, 256, (40, 56, 56, 3), dtype=torch.uint8, device=cuda)
    labels = (torch.arange(40) % 2).to(cuda)
    model = build_cnn("primer", 4).to(cuda).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, "adam", 1e-3)
    batches = lambda epoch: train_batches(images, labels, 8, AugmentPolicy(**EVERY), 0, epoch, cuda, True)  # noqa: E731
    ids = torch.randint(0, 12, (150,))
    lm = RNNLM(12, "lstm", 16).to(cuda)

    def strict(make):
        def wrapped(epoch):
            it = iter(make(epoch))
            yield next(it)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                yield from it
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return wrapped

    config = FitConfig(1, grad_clip=1.0, log_every=10**9)
    fit(model, optimizer, strict(batches), lambda m, e: {"val/loss": 0.0}, config)
    fit(lm, make_optimizer(lm, "sgd", 1.0), strict(epoch_batches(lm, ids, "random", **LM, seed=0, device=cuda)),
        lambda m, e: {"val/loss": 0.0}, config)


def test_fused_adam_on_the_cpu_takes_the_per_tensor_adams_steps():
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused, plain = make_optimizer(models[0], "adam", 1e-2), make_optimizer(models[1], "adam", 1e-2, fused=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]  # the CPU default is the fused kernel
    x = torch.randn(16, 7)
    for _ in range(5):
        for model, optimizer in ((models[0], fused), (models[1], plain)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
