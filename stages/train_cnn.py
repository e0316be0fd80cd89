"""Train the cat/dog CNN on the augment stage's arrays, augmenting each batch on the training device.

train_cnn.model.arch 'primer' is the primer's CNNmodel (width 16 gives its 16-32-64-128 channels);
'resnet' is a stronger from-scratch residual net. Optimizer, learning rate, epochs, batch size,
gradient clipping, bf16 autocast, channels_last, the lr schedule (constant, cosine or onecycle, with
warmup) and early stopping (patience epochs without a val/acc gain above min_delta; 0 = off) come
from train_cnn; the augmentation policy and image sizes from augment. Writes the model of the best
epoch by val/acc (a plain dict: state, model args, classes), metrics JSON (the kept epoch's, with
best/epoch), per-epoch curves (CSV for DVC plots, and a PNG marking the kept epoch) and logs them,
the model and system metrics to MLflow. A checkpoint goes to --checkpoint every epoch, outside DVC's
outputs so that `dvc repro` never deletes it: a killed run resumes from it; one made for other
params or data is ignored.
Several processes (DDP): set train_cnn.nproc (and nnodes, rdzv_endpoint for several hosts; the stage
launches its processes as torchrun does), or run `torchrun ... stages/train_cnn.py ...` yourself
(docs/training.md). Only rank 0 logs and writes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from primer import distributed
from primer.devices import use_bf16
from primer.models.cnn import build_cnn
from primer.params import result_values
from primer.stage import cli, load_checked, open_stage, stage_parser
from primer.training.checkpoint import Checkpoint, fingerprint, seed_everything
from primer.training.cnn_training import (
    CnnParams,
    check_cnn_params,
    epoch_batches,
    served_classifier,
    training_policy,
)
from primer.training.loop import FitConfig, compile_model, fit, make_optimizer
from primer.training.outputs import Curves, TrainingOutputs, add_training_outputs
from primer.vision.image_arrays import png_bytes
from primer.vision.image_batches import data_identity, eval_batches, evaluate_binary, load_arrays, train_steps

Params = CnnParams  # what this stage reads


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--arrays", required=True, type=Path, help="augment stage output folder")
    add_training_outputs(parser)
    args = parser.parse_args(argv)
    p = load_checked(args.params, CnnParams, check_cnn_params).train_cnn  # fail on bad params before any launch
    device = distributed.start(__file__, p, p.device, "train_cnn")
    if device is None:
        return  # this process was the node's agent: its ranks trained
    try:
        with open_stage("train_cnn", args.params, CnnParams, system_metrics=True, check=check_cnn_params) as (
                params, run):
            train(args, params, run, device)
    finally:
        distributed.teardown()


def train(args, params: CnnParams, run, device: torch.device) -> None:
    p, aug, seed = params.train_cnn, params.augment, params.seed
    seed_everything(seed)
    data = load_arrays(args.arrays, aug.train_size, aug.eval_size)
    (train_x, train_y), (val_x, val_y) = data["train"], data["val"]
    if device.type == "cuda":  # uint8 on the GPU: 25,000 images take ~1.7 GB
        train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    model_args = p.model.model_dump()
    model = build_cnn(**model_args).to(device)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = distributed.wrap(compile_model(model, p.compile), device)
    bf16 = use_bf16(device, p.bf16)
    run.set_tags({"bf16": bf16, "world_size": distributed.world()})
    fitted = fit(
        net, make_optimizer(net, p.optimizer, p.lr, p.weight_decay),
        epoch_batches(train_x, train_y, p, training_policy(aug), seed, device),
        lambda _model, _epoch: evaluate_binary(
            model, eval_batches(val_x, val_y, p.batch_size, device, p.channels_last), bf16, device),
        FitConfig.of(p, patience=p.patience, bf16=bf16, best_metric="val/acc", higher_is_better=True,
                     desc="train_cnn", steps_per_epoch=train_steps(len(train_x), p.batch_size)),
        Checkpoint(args.checkpoint, fingerprint(params=result_values(params.model_dump(), CnnParams),
                                                world=distributed.world(), data=data_identity(args.arrays)),
                   model_args=model_args),
        run,
    )
    if not distributed.is_main():
        return
    summary = fitted.summary("val/acc")
    TrainingOutputs.from_args(args).write(
        run, model, model_args, fitted, "val/acc", summary,
        Curves(f"train_cnn ({p.model.arch})", "training_curves.png"),
        served=served_classifier(params, png_bytes(val_x[0].cpu().numpy())), extra={"classes": data["meta"]["classes"]})
    print(f"train_cnn: kept epoch {fitted.best_epoch} of {summary['epochs']} (val/acc {fitted.best:.4f}) "
          f"-> {args.model}", flush=True)


if __name__ == "__main__":
    raise SystemExit(cli(main))
