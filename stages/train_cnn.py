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
Several processes (DDP): set train_cnn.nproc (the stage relaunches itself under torchrun), or run
`torchrun --nproc_per_node N stages/train_cnn.py ...` yourself. Only rank 0 logs and writes.
"""

from __future__ import annotations

import os
import random
import sys
from functools import partial
from pathlib import Path

import torch

from primer import distributed
from primer.devices import configure_device, pick_device, use_bf16
from primer.models.cnn import ARCHS, build_cnn
from primer.params import choice, flag, integer, number, output_only, result_values, run_only, some_of
from primer.stage import cli, load_checked, open_stage, stage_parser
from primer.training.checkpoint import Checkpoint, fingerprint
from primer.training.loop import (
    COMPILE_MODES,
    OPTIMIZERS,
    FitConfig,
    check_fit_params,
    compile_model,
    fit,
    fit_schema,
    make_optimizer,
)
from primer.training.outputs import Curves, TrainingOutputs, add_training_outputs
from primer.vision.augment_policy import AugmentPolicy, augment_schema, check_augment
from primer.vision.image_arrays import png_bytes
from primer.vision.image_batches import (
    data_identity,
    eval_batches,
    evaluate_binary,
    load_arrays,
    train_batches,
    train_steps,
)

AUGMENT = augment_schema()
SCHEMA = {
    "seed": integer(0),
    "augment": some_of({"train_size": AUGMENT["train_size"], "eval_size": AUGMENT["eval_size"],
                        "policy": AUGMENT["policy"],
                        "draft_oversample": output_only(AUGMENT["draft_oversample"])}),  # for the served model
    "verify": some_of({"max_image_pixels": integer(1)}),  # the served model refuses larger photos, as verify did
    "train_cnn": {
        "model": {"arch": choice(*ARCHS), "width": integer(1, 512)},
        "optimizer": choice(*OPTIMIZERS),
        "lr": number(1e-7, 10),
        "weight_decay": number(0, 1),
        "epochs": integer(1, 10_000),
        "batch_size": integer(1, 65_536),
        "grad_clip": number(0, 1e6),
        "bf16": flag(),
        "channels_last": run_only(flag()),
        "log_every": run_only(integer(1)),
        "nproc": integer(1, 256),
        "device": run_only(choice("auto", "cpu", "cuda")),
        "compile": run_only(choice(*COMPILE_MODES, false_means="off")),  # YAML reads a bare off as false
        **fit_schema(),
    },
}


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process with `torchrun --standalone --nproc_per_node nproc` running this script."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__]
    os.execv(sys.executable, argv + sys.argv[1:])


def check_params(params: dict) -> None:
    check_augment(params["augment"])
    check_fit_params(params["train_cnn"], "train_cnn")
    pick_device(params["train_cnn"]["device"], "train_cnn.device")


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--arrays", required=True, type=Path, help="augment stage output folder")
    add_training_outputs(parser)
    args = parser.parse_args(argv)
    p = load_checked(args.params, SCHEMA, check_params)["train_cnn"]  # fail on bad params before any launch or work
    if p["nproc"] > 1 and not distributed.launched():
        relaunch_under_torchrun(p["nproc"])
    device = configure_device(distributed.setup(pick_device(p["device"], "train_cnn.device")))
    if not distributed.is_main():
        os.environ["PRIMER_TRACKING"] = "off"  # rank 0 alone logs
    try:
        with open_stage("train_cnn", args.params, SCHEMA, system_metrics=True, check=check_params) as (params, run):
            train(args, params, run, device)
    finally:
        distributed.teardown()


def train(args, params: dict, run, device: torch.device) -> None:
    p, aug = params["train_cnn"], params["augment"]
    seed = params["seed"]
    torch.manual_seed(seed)
    random.seed(seed)
    data = load_arrays(args.arrays, aug["train_size"], aug["eval_size"])
    policy = AugmentPolicy(**aug["policy"])
    if policy.crop_size and policy.crop_size != aug["eval_size"]:
        print(f"train_cnn: note: training crops are {policy.crop_size} px, evaluation images {aug['eval_size']} px",
              flush=True)
    (train_x, train_y), (val_x, val_y) = data["train"], data["val"]
    if device.type == "cuda":  # uint8 on the GPU: 25,000 images take ~1.7 GB
        train_x, train_y, val_x, val_y = (t.to(device) for t in (train_x, train_y, val_x, val_y))
    model = build_cnn(**p["model"]).to(device)
    if p["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    net = distributed.wrap(compile_model(model, p["compile"]), device)
    optimizer = make_optimizer(net, p["optimizer"], p["lr"], p["weight_decay"])
    bf16 = use_bf16(device, p["bf16"])
    run.set_tags({"bf16": bf16, "world_size": distributed.world()})
    fitted = fit(
        net, optimizer, partial(_train_epoch, train_x, train_y, p, policy, seed, device),
        lambda _model, _epoch: evaluate_binary(
            model, eval_batches(val_x, val_y, p["batch_size"], device, p["channels_last"]), bf16, device),
        FitConfig.from_params(p, bf16=bf16, best_metric="val/acc", higher_is_better=True, desc="train_cnn",
                              steps_per_epoch=train_steps(len(train_x), p["batch_size"])),
        Checkpoint(args.checkpoint, fingerprint(train=result_values(p, SCHEMA["train_cnn"]),
                                                augment=result_values(aug, SCHEMA["augment"].schema), seed=seed,
                                                data=data_identity(args.arrays), world=distributed.world()),
                   model_args=p["model"]),
        run,
    )
    if not distributed.is_main():
        return
    summary = fitted.summary("val/acc")
    TrainingOutputs.from_args(args).write(
        run, model, p["model"], fitted, "val/acc", summary,
        Curves(f"train_cnn ({p['model']['arch']})", "training_curves.png"),
        served={"family": "PhotoClassifier", "input_example": {"image": [png_bytes(val_x[0].cpu().numpy())]},
                "model_config": {"eval_size": aug["eval_size"], "draft_oversample": aug["draft_oversample"],
                                 "max_image_pixels": params["verify"]["max_image_pixels"]}},
        extra={"classes": data["meta"]["classes"]})
    print(f"train_cnn: kept epoch {fitted.best_epoch} of {summary['epochs']} (val/acc {fitted.best:.4f}) "
          f"-> {args.model}", flush=True)


def _train_epoch(images, labels, p, policy, seed, device, epoch):
    return train_batches(images, labels, p["batch_size"], policy, seed, epoch, device, p["channels_last"])


if __name__ == "__main__":
    raise SystemExit(cli(main))
