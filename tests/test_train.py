"""clip.train and `clip train`: schedule, parameter groups, data, resume, checkpoints, fine-tuning."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from _checkpoints import release_archive
from _examples import load_example
from _model_factory import TINY_TRAIN_CONFIG

import clip
from clip.__main__ import main as cli_main
from clip.train import TrainConfig, build_from_config, cosine_lr, parameter_groups, train

shapes_dataset = load_example("shapes_dataset")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """(train.csv, val.csv): 48 training pairs of every combination, 24 validation pairs."""
    out = tmp_path_factory.mktemp("shapes")
    every = [(s, c) for s in shapes_dataset.SHAPES for c in shapes_dataset.COLOURS]
    train_csv = shapes_dataset.generate(str(out), "train", 48, every, seed=1)
    val_csv = shapes_dataset.generate(str(out), "val", 24, every, seed=2)
    config = out / "tiny.json"
    config.write_text(json.dumps(TINY_TRAIN_CONFIG), encoding="utf-8")
    return train_csv, val_csv, config


def _cli(*args: str) -> int:
    return cli_main(["train", *args])


def _state(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------------
# pieces


def test_cosine_lr_warms_up_linearly_then_decays_to_zero():
    base, warmup, total = 0.5, 4, 20
    lrs = [cosine_lr(step, base, warmup, total) for step in range(total + 1)]
    assert lrs[:warmup] == [base * (i + 1) / warmup for i in range(warmup)]
    assert lrs[warmup] == base
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    mid = warmup + (total - warmup) // 2
    assert lrs[mid] == pytest.approx(base / 2)
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(0, base, 0, total) == base  # no warmup


def test_parameter_groups_exempt_gains_biases_embeddings_and_logit_scale(shapes):
    model = build_from_config(str(shapes[2]))
    decay, no_decay = parameter_groups(model, 0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    for name in (
        "logit_scale",
        "token_embedding.weight",
        "positional_embedding",
        "visual.class_embedding",
        "visual.positional_embedding",
        "ln_final.weight",
        "ln_final.bias",
        "transformer.resblocks.0.mlp.c_fc.bias",
    ):
        assert name in exempt, name
    for name in (
        "text_projection",
        "visual.proj",
        "visual.conv1.weight",
        "transformer.resblocks.0.attn.in_proj_weight",
        "transformer.resblocks.0.mlp.c_fc.weight",
    ):
        assert name in decayed, name
    model.lock_image_tower()
    trainable = {names[id(p)] for g in parameter_groups(model, 0.2) for p in g["params"]}
    assert not any(n.startswith("visual.") for n in trainable)


def test_bad_rows_are_counted_and_skipped(shapes, tmp_path, capsys):
    train_csv, _, config = shapes
    rows = list(csv.DictReader(open(train_csv, encoding="utf-8")))
    folder = train_csv.parent
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows[0]["title"] = ""  # empty caption: dropped when the file is read
    rows[1]["filepath"] = str(tmp_path / "missing.png")  # missing file
    rows[2]["filepath"] = str(tmp_path / "broken.png")  # unreadable image
    for row in rows[3:]:
        row["filepath"] = str(folder / row["filepath"])
    bad_csv = tmp_path / "bad.tsv"
    with open(bad_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    history = train(
        TrainConfig(
            train_data=str(bad_csv),
            model_config=str(config),
            epochs=1,
            batch_size=47,
            warmup=1,
            workers=0,
            logs=str(tmp_path / "logs"),
        )
    )
    assert history[-1]["empty_captions"] == 1
    assert history[-1]["skipped"] == 2  # the missing and the unreadable image, each replaced by the next row
    assert math.isfinite(history[-1]["loss"])
    assert "bad rows skipped 2 (+1 empty captions)" in (tmp_path / "logs" / "out.log").read_text()


def test_usage_errors_are_reported(shapes, tmp_path, capsys):
    train_csv, _, config = shapes
    assert _cli("--train-data", str(train_csv)) == 2  # neither --model nor --model-config
    assert "exactly one of --model" in capsys.readouterr().err
    assert (
        _cli(
            "--train-data",
            str(train_csv),
            "--model-config",
            str(config),
            "--csv-img-key",
            "path",
            "--logs",
            str(tmp_path),
        )
        == 1
    )
    assert "no column 'path'" in capsys.readouterr().err
    assert _cli("--train-data", str(tmp_path / "none.csv"), "--model-config", str(config)) == 2
    assert _cli("--train-data", str(train_csv), "--model-config", str(config), "--precision", "fp16") == 2


# ------------------------------------------------------------------------------------------------
# checkpoints: resume and clip.load


def test_resume_continues_to_the_uninterrupted_result(shapes, tmp_path, capsys):
    train_csv, val_csv, config = shapes
    common = [
        "--train-data",
        str(train_csv),
        "--model-config",
        str(config),
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--workers",
        "0",
        "--seed",
        "3",
    ]
    assert _cli(*common, "--epochs", "3", "--logs", str(tmp_path / "whole")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]  # one line per epoch
    assert _cli(*common, "--epochs", "3", "--logs", str(tmp_path / "cut"), "--save-frequency", "2") == 0
    cut = tmp_path / "cut" / "checkpoints"
    assert sorted(p.name for p in cut.iterdir()) == ["epoch_2.pt", "epoch_3.pt"]  # every 2 and the last
    (cut / "epoch_3.pt").unlink()  # as if stopped after epoch 2
    assert _cli(*common, "--epochs", "3", "--logs", str(tmp_path / "cut"), "--resume", "latest") == 0
    whole, resumed = _state(tmp_path / "whole/checkpoints/epoch_3.pt"), _state(cut / "epoch_3.pt")
    # one process, the same kernels on the same data in the same order: equal bit for bit
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for index, state in whole["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][index]["exp_avg_sq"])
    assert not any(p.name.endswith(".tmp") for p in cut.iterdir())  # nothing half-written left


def test_checkpoint_round_trips_through_clip_load(shapes, tmp_path):
    train_csv, _, config = shapes
    train(
        TrainConfig(
            train_data=str(train_csv),
            model_config=str(config),
            epochs=1,
            batch_size=16,
            warmup=1,
            workers=0,
            logs=str(tmp_path),
        )
    )
    path = tmp_path / "checkpoints" / "epoch_1.pt"
    saved = _state(path)
    assert all(v.dtype == torch.float32 for v in saved["state_dict"].values() if v.is_floating_point())
    reference = build_from_config(str(config))
    reference.load_state_dict(saved["state_dict"])
    reference.eval()
    loaded, preprocess = clip.load(str(path), device="cpu", dtype=torch.float32)  # the file's exact values
    images, _ = shapes_images(train_csv, preprocess, 4)
    tokens = clip.tokenize(["a red circle", "a blue square", "a cross"], context_length=16)
    with torch.no_grad():
        for ours, theirs in zip(loaded(images, tokens), reference(images, tokens)):
            assert torch.equal(ours, theirs)  # the same weights and code in one process


def shapes_images(train_csv, preprocess, count):
    from PIL import Image

    rows = list(csv.DictReader(open(train_csv, encoding="utf-8")))[:count]
    images = [preprocess(Image.open(train_csv.parent / r["filepath"])) for r in rows]
    return torch.stack(images), [r["title"] for r in rows]


def test_fine_tuning_a_release_checkpoint_lowers_the_validation_loss(shapes, tmp_path):
    train_csv, val_csv, _ = shapes
    archive = release_archive("vit")  # TorchScript, fp16 weights, 77-token context: as released
    history = train(
        TrainConfig(
            train_data=str(train_csv),
            val_data=str(val_csv),
            model=archive,
            epochs=3,
            batch_size=16,
            lr=1e-3,
            wd=0.1,
            warmup=2,
            workers=0,
            logs=str(tmp_path),
        )
    )
    assert history[0]["epoch"] == 0 and "loss" not in history[0]  # validation before training
    val_losses = [entry["val_loss"] for entry in history]
    assert all(math.isfinite(v) for v in val_losses)
    assert val_losses[-1] < val_losses[0], val_losses
    assert "zero_shot_top1" in history[-1]  # the validation file has a label column
    saved = _state(tmp_path / "checkpoints" / "epoch_3.pt")["state_dict"]
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())  # fp32 masters
    model, _ = clip.load(str(tmp_path / "checkpoints" / "epoch_3.pt"))
    assert model.logit_scale.item() <= math.log(100) + 1e-6


# ------------------------------------------------------------------------------------------------
# the demonstration: a tiny CLIP from scratch composes words it only saw apart

ZERO_SHOT_CONFIG = {
    **TINY_TRAIN_CONFIG,
    "embed_dim": 64,
    "vision_layers": 2,
    "vision_patch_size": 4,
    "transformer_layers": 2,
}
CHANCE_MULTIPLE = 4  # the bar: zero-shot accuracy on unseen combinations >= 4x chance


@pytest.mark.slow  # 200 steps of a tiny CLIP; 16 min on a shared machine loaded ~8x, not yet timed alone
def test_from_scratch_zero_shot_on_unseen_combinations(tmp_path):
    from PIL import Image

    train_csv, val_csv = shapes_dataset.make_split(str(tmp_path), train_count=1000, val_count=160, seed=0)
    config = tmp_path / "zero_shot.json"
    config.write_text(json.dumps(ZERO_SHOT_CONFIG), encoding="utf-8")
    train(
        TrainConfig(
            train_data=str(train_csv),
            model_config=str(config),
            epochs=10,
            batch_size=50,
            lr=3e-3,
            wd=0.1,
            warmup=10,
            workers=0,
            logs=str(tmp_path / "logs"),
        )
    )
    model, preprocess = clip.load(
        str(tmp_path / "logs/checkpoints/epoch_10.pt"), device="cpu", dtype=torch.float32
    )
    classes = [
        shapes_dataset.class_prompt(s, c) for s in shapes_dataset.SHAPES for c in shapes_dataset.COLOURS
    ]
    held_out = {shapes_dataset.class_prompt(s, c) for s, c in shapes_dataset.held_out_combinations()}
    rows = list(csv.DictReader(open(val_csv, encoding="utf-8")))
    assert {r["label"] for r in rows} == held_out  # validation: only combinations never seen in training
    train_labels = {r["label"] for r in csv.DictReader(open(train_csv, encoding="utf-8"))}
    assert not train_labels & held_out
    images = torch.stack([preprocess(Image.open(tmp_path / r["filepath"])) for r in rows])
    with torch.no_grad():
        text = model.encode_text(clip.tokenize(classes, context_length=ZERO_SHOT_CONFIG["context_length"]))
        logits, _ = model(images, clip.tokenize(classes, context_length=ZERO_SHOT_CONFIG["context_length"]))
    assert text.shape[0] == len(classes)
    predicted = [classes[i] for i in logits.argmax(dim=1).tolist()]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    chance = 1 / len(classes)  # all 16 shape-colour prompts compete
    print(f"zero-shot accuracy on unseen combinations: {accuracy:.3f} (chance {chance:.4f})")
    assert accuracy >= CHANCE_MULTIPLE * chance, accuracy


def test_amp_bf16_grad_checkpointing_locked_image_tower_and_a_loader_worker(shapes, tmp_path):
    train_csv, _, config = shapes
    args = [
        "--train-data",
        str(train_csv),
        "--model-config",
        str(config),
        "--epochs",
        "1",
        "--batch-size",
        "16",
    ]
    args += [
        "--warmup",
        "1",
        "--workers",
        "1",
        "--precision",
        "amp_bf16",
        "--grad-checkpointing",
        "--lock-image",
    ]
    assert _cli(*args, "--logs", str(tmp_path)) == 0
    saved = _state(tmp_path / "checkpoints" / "epoch_1.pt")["state_dict"]
    torch.manual_seed(TrainConfig.seed)  # the run's initialisation, redone
    initial = build_from_config(str(config)).state_dict()
    assert all(torch.equal(saved[k], initial[k]) for k in initial if k.startswith("visual."))
    assert not torch.equal(saved["token_embedding.weight"], initial["token_embedding.weight"])
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
