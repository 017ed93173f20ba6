"""The generic training loop, checkpoints and the recipe runner (tiny CPU networks and pairs)."""

import json
import math

import pytest
import torch
import yaml

from graphreg.methods.cnn import BSplineNet, LinearDeformableNet, VoxelMorph
from graphreg.errors import ConfigError, GraphregError, InputFileError
from graphreg.ops.losses import RegistrationLoss
from graphreg.core.spatial import warp
from graphreg.training import (DenseTrainingData, dense_loss_fn, latest_checkpoint, load_model, read_checkpoint,
                               read_recipe, save_checkpoint, train, train_from_config)

SHAPE = (12, 13, 14)


def _tiny_model():
    return VoxelMorph(encoder=(4, 4), decoder=(4, 4, 4), integration_steps=0)


def _batch():
    """A blob and the same blob shifted by one voxel along x."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SHAPE], indexing="ij"))
    centre = torch.tensor([5.5, 6.0, 6.5]).view(3, 1, 1, 1)
    fixed = torch.exp(-((grid - centre) ** 2).sum(0) / 8.0)[None, None]
    moving = torch.exp(-((grid - centre - torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1, 1)) ** 2).sum(0) / 8.0)[None, None]
    return {"fixed": fixed, "moving": moving, "fixed_mask": torch.ones_like(fixed)}


LOSS = dense_loss_fn(RegistrationLoss("mse", "diffusion", weight=0.01))


def _loss_value(model, batch):
    with torch.no_grad():
        return float(LOSS(model, batch)[0])


def test_one_step_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    model = _tiny_model()
    batch = _batch()
    before = _loss_value(model, batch)
    result = train(model, LOSS, lambda step: batch, steps=1, out_dir=tmp_path, lr=1e-3, progress=False)
    assert result.step == 1 and result.stopped == "completed"
    assert _loss_value(model, batch) < before
    assert result.history[0]["loss"] == pytest.approx(before, rel=1e-5)
    assert {"mse", "diffusion", "seconds"} <= set(result.history[0])
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "history.jsonl").is_file()


def test_resume_matches_uninterrupted_run(tmp_path):
    batch = _batch()

    def data(step):
        generator = torch.Generator().manual_seed(step)
        return {k: v + 0.01 * torch.rand(v.shape, generator=generator) for k, v in batch.items()}

    torch.manual_seed(1)
    straight = _tiny_model()
    train(straight, LOSS, data, steps=4, out_dir=tmp_path / "a", lr=1e-3, checkpoint_every=2, progress=False)

    torch.manual_seed(1)
    first = _tiny_model()
    train(first, LOSS, data, steps=2, out_dir=tmp_path / "b", lr=1e-3, checkpoint_every=2, progress=False)
    torch.manual_seed(99)  # a resumed run must not depend on the caller's seed or initial weights
    second = _tiny_model()
    result = train(second, LOSS, data, steps=4, out_dir=tmp_path / "b", lr=1e-3, checkpoint_every=2,
                   progress=False)
    assert result.resumed_from == 2 and result.step == 4
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    for a, b in zip(straight.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_cosine_schedule_lowers_the_rate_to_zero_and_resumes_on_its_curve(tmp_path, monkeypatch):
    from graphreg.training import loop

    assert loop.scheduled_lr(0.01, "cosine", 0, 4) == pytest.approx(0.01)
    assert loop.scheduled_lr(0.01, "cosine", 2, 4) == pytest.approx(0.005)
    assert loop.scheduled_lr(0.01, "constant", 3, 4) == 0.01
    seen = []
    step_before = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step_before(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    batch = _batch()
    first = train(_tiny_model(), LOSS, lambda step: batch, steps=4, out_dir=tmp_path, lr=0.01,
                  lr_schedule="cosine", max_minutes=1e-6, progress=False)
    assert first.stopped == "time limit" and first.step == 1
    train(_tiny_model(), LOSS, lambda step: batch, steps=4, out_dir=tmp_path, lr=0.01, lr_schedule="cosine",
          progress=False)  # resumed at step 1
    assert seen == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    with pytest.raises(ConfigError, match="lr_schedule"):
        train(_tiny_model(), LOSS, lambda step: batch, steps=1, out_dir=tmp_path / "bad", lr_schedule="step")


def test_time_limit_stops_with_a_checkpoint(tmp_path):
    batch = _batch()
    result = train(_tiny_model(), LOSS, lambda step: batch, steps=1000, out_dir=tmp_path, max_minutes=1e-6,
                   checkpoint_every=500, progress=False)
    assert result.stopped == "time limit" and result.step == 1
    assert result.checkpoint == latest_checkpoint(tmp_path)
    assert result.model_path is None
    state = read_checkpoint(result.checkpoint)
    assert state["step"] == 1 and state["optimizer"] is not None


def test_validation_hook_and_pruning(tmp_path):
    batch = _batch()
    calls = []

    def validate(model):
        assert not model.training
        calls.append(1)
        return {"score": 1.5}

    result = train(_tiny_model(), LOSS, lambda step: batch, steps=6, out_dir=tmp_path, checkpoint_every=1,
                   keep_checkpoints=2, validate=validate, validate_every=2, progress=False)
    assert len(calls) == 3  # steps 2, 4 and the end
    assert [r["val_score"] for r in result.history if "val_score" in r] == [1.5, 1.5, 1.5]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000005.pt", "step_0000006.pt"]
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["val_score"] == 1.5


def test_exception_bad_arguments_and_loss(tmp_path):
    batch = _batch()
    with pytest.raises(ConfigError, match="steps"):
        train(_tiny_model(), LOSS, lambda step: batch, steps=0, out_dir=tmp_path)
    with pytest.raises(GraphregError, match="loss_fn"):
        train(_tiny_model(), lambda model, b: torch.tensor(float("nan"), requires_grad=True), lambda s: batch,
              steps=1, out_dir=tmp_path / "nan", progress=False)
    with pytest.raises(GraphregError, match="ran out"):
        train(_tiny_model(), LOSS, [batch], steps=2, out_dir=tmp_path / "short", progress=False)


@pytest.mark.parametrize("make", [
    lambda: VoxelMorph(encoder=(4, 4), decoder=(4, 4, 4), integration_steps=2),
    lambda: BSplineNet(features=(4, 4), control_spacing=3, head=4),
    lambda: LinearDeformableNet(features=(4, 4), dilations=(1, 2), head=4),
])
def test_checkpoint_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():  # make the weights non-trivial so the outputs differ from the identity
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    batch = _batch()
    path = save_checkpoint(tmp_path / "m.pt", model, config={"note": "x"}, step=7)
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.model_args == model.model_args and not loaded.training
    model.eval()
    with torch.no_grad():
        expected = model(batch["fixed"], batch["moving"])
        assert expected.abs().max() > 1e-3
        assert torch.equal(loaded(batch["fixed"], batch["moving"]), expected)
    state = read_checkpoint(path)
    assert state["config"] == {"note": "x"} and state["step"] == 7 and state["graphreg_version"]


def test_exception_other_architecture_and_corrupt_files(tmp_path):
    path = save_checkpoint(tmp_path / "vxm.pt", _tiny_model())
    with pytest.raises(GraphregError, match="expected a 'bspline-cnn' network, got a 'voxelmorph' network"):
        load_model(path, architecture="bspline-cnn")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputFileError, match="not a readable checkpoint"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(InputFileError, match="expected a graphreg checkpoint"):
        load_model(foreign)
    with pytest.raises(InputFileError, match="not found"):
        load_model(tmp_path / "missing.pt")
    state = torch.load(path, weights_only=True)
    state["model_args"]["encoder"] = [8, 8]
    torch.save(state, tmp_path / "mismatch.pt")
    with pytest.raises(GraphregError, match="weights do not fit"):
        load_model(tmp_path / "mismatch.pt")
    with pytest.raises(ConfigError, match="holds a 'voxelmorph' checkpoint"):
        train(BSplineNet(features=(4,), control_spacing=4, head=4), LOSS, lambda s: _batch(), steps=1,
              out_dir=_populated(tmp_path / "run"), progress=False)


def _populated(folder):
    train(_tiny_model(), LOSS, lambda s: _batch(), steps=1, out_dir=folder, progress=False)
    return folder


def _write_pool(out_dir, count):
    """Cached pairs in the layout DenseTrainingData writes, so no CT needs to be synthesised."""
    batch = _batch()
    (out_dir / "pairs").mkdir(parents=True)
    for index in range(count):
        item = {"fixed": batch["fixed"][0], "moving": batch["moving"][0], "fixed_mask": batch["fixed_mask"][0],
                "displacement": torch.zeros((3,) + SHAPE), "spacing_mm": torch.tensor([4.0, 4.0, 4.0]),
                "fixed_landmarks": torch.tensor([[5.5, 6.0, 6.5]], dtype=torch.float64),
                "moving_landmarks": torch.tensor([[5.5, 6.0, 7.5]], dtype=torch.float64)}
        torch.save(item, out_dir / "pairs" / f"pair_{index:04d}.pt")


def test_dense_training_data_crops_are_reproducible(tmp_path):
    _write_pool(tmp_path, 3)
    data = DenseTrainingData(tmp_path, pool_size=2, validation_size=1, crop_shape=(8, 8, 8), batch_size=2)
    first, again = data(5), data(5)
    assert first["fixed"].shape == (2, 1, 8, 8, 8) and first["displacement"].shape == (2, 3, 8, 8, 8)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert data.validation_pairs()[0]["fixed"].shape == (1, 1) + SHAPE
    with pytest.raises(ConfigError, match="crop_shape"):
        DenseTrainingData(tmp_path, pool_size=2, crop_shape=(40, 8, 8))(0)


RECIPE = {
    "architecture": "voxelmorph",
    "model": {"encoder": [4, 4], "decoder": [4, 4, 4], "integration_steps": 0},
    "data": {"pool_size": 2, "validation_size": 1, "crop_shape": [8, 8, 8], "spacing_mm": 4.0},
    "loss": {"similarity": "mse", "regulariser": "diffusion", "weight": 0.01},
    "train": {"steps": 3, "lr": 1e-3, "checkpoint_every": 2, "validate_every": 2},
    "gpu": {"train": {"steps": 5}, "data": {"crop_shape": None}},
}


def test_train_from_config_end_to_end_with_cached_pairs(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    _write_pool(tmp_path / "out", 3)
    result = train_from_config(config, tmp_path / "out", progress=False)
    assert result.step == 3 and result.model_path is not None
    assert any("val_tre_mm" in record for record in result.history)
    # the landmark moves by 1 voxel = 4 mm; the barely trained network is still close to that
    assert [r["val_tre_mm"] for r in result.history if "val_tre_mm" in r][-1] == pytest.approx(4.0, abs=0.5)
    stored = read_checkpoint(result.model_path)["config"]
    assert stored["architecture"] == "voxelmorph" and stored["data"]["spacing_mm"] == 4.0
    assert load_model(result.model_path).model_args["encoder"] == [4, 4]


def test_read_recipe_variant_and_errors(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(RECIPE))
    gpu = read_recipe(config, "gpu")
    assert gpu["train"]["steps"] == 5 and gpu["train"]["lr"] == 1e-3 and gpu["data"]["crop_shape"] is None
    assert "gpu" not in read_recipe(config)
    for change, message in [({"architecture": "resnet"}, "architecture"), ({"optimiser": {}}, "optimiser"),
                            ({"train": {"steps": 1, "momentum": 0.9}}, "train.momentum")]:
        config.write_text(yaml.safe_dump({**RECIPE, **change}))
        with pytest.raises(ConfigError, match=message):
            read_recipe(config)
    with pytest.raises(ConfigError, match="no variant 'cpu'"):
        config.write_text(yaml.safe_dump(RECIPE))
        read_recipe(config, "cpu")


@pytest.mark.parametrize("name", ["voxelmorph", "bspline_cnn", "linear_deformable"])
def test_shipped_recipes_build(name):
    from pathlib import Path

    from graphreg.training import build_model

    path = Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml"
    for variant in (None, "gpu"):
        recipe = read_recipe(path, variant)
        model = build_model(recipe["architecture"], recipe["model"])
        RegistrationLoss(**{k: v for k, v in recipe["loss"].items() if k != "mask_similarity"})
        DenseTrainingData(".", **recipe["data"])
        fixed = torch.rand(1, 1, 17, 18, 19)
        assert model(fixed, fixed).shape == (1, 3, 17, 18, 19)


def test_warp_of_prediction_is_differentiable_end_to_end():
    model = _tiny_model()
    batch = _batch()
    displacement = model(batch["fixed"], batch["moving"])
    warp(batch["moving"], displacement).sum().backward()
    assert model.unet.down[0][0].weight.grad is not None
