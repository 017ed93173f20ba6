"""GraphRegNet: shapes, equivariance, ablation variants, its losses, checkpoints, the pipeline hook."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphreg.core.config import load_config
from graphreg.errors import ConfigError, GraphregError, ShapeError
from graphreg.core.geometry import Grid
from graphreg.methods.graphregnet import GraphRegNet
from graphreg.methods.graphregnet.data import KeypointGraphSample, keypoint_targets, tps_operator
from graphreg.methods.graphregnet.model import interpolation_matrix, resize_cubes
from graphreg.methods.graphregnet.train import graph_loss_fn, graph_validation, predict
from graphreg.methods.keypoint.correlation import candidate_displacements
from graphreg.methods.keypoint.densify import ThinPlateSpline
from graphreg.methods.keypoint.driver import learned_search
from graphreg.methods.keypoint.graph import knn_graph
from graphreg.methods.keypoint.preprocess import WorkingPair
from graphreg.methods.keypoint.regularise import distribution_moments
from graphreg.training.checkpoint import load_model, save_checkpoint

RADIUS = 3  # 7^3 candidates keep the tests fast


def _net(graph="edgeconv", seed=0, live_decoder=True):
    torch.manual_seed(seed)
    net = GraphRegNet(radius=RADIUS, step=1.0, k=5, features=8, encoder_channels=4, decoder_channels=4,
                      edgeconv_layers=2, graph=graph)
    if live_decoder:  # the output layer starts at zero; give it weights so the decoder matters
        torch.nn.init.normal_(net.decoder.out.weight, std=0.5)
    return net.eval()


def _inputs(n=40, seed=1):
    gen = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(n, 3, generator=gen) * 30
    cost = torch.rand(n, (2 * RADIUS + 1) ** 3, generator=gen)
    return cost, keypoints, knn_graph(keypoints, 5)


@pytest.mark.parametrize("graph", ["edgeconv", "none", "coordinates"])
def test_smoke(graph):
    cost, keypoints, edges = _inputs()
    logits = _net(graph)(cost, keypoints, edges)
    assert logits.shape == cost.shape and torch.isfinite(logits).all()


def test_default_size_is_near_the_published_model():
    count = sum(p.numel() for p in GraphRegNet().parameters())
    assert 20_000 < count < 60_000  # the published GraphRegNet has about 33k weights


def test_exception():
    cost, keypoints, edges = _inputs()
    with pytest.raises(ShapeError, match="cost"):
        _net()(cost[:, :-1], keypoints, edges)
    with pytest.raises(ConfigError, match="graph"):
        GraphRegNet(graph="gat")


def test_untrained_network_is_the_soft_argmin_of_the_costs():
    cost, keypoints, edges = _inputs()
    net = _net(live_decoder=False)
    logits = net(cost, keypoints, edges)
    expected = -net.log_beta.exp() * GraphRegNet.normalise_cost(cost)
    torch.testing.assert_close(logits, expected)
    assert torch.equal(logits.argmax(1), cost.argmin(1))


def test_permuting_the_keypoints_permutes_the_output():
    cost, keypoints, _ = _inputs()
    net = _net()
    order = torch.randperm(len(keypoints), generator=torch.Generator().manual_seed(3))
    direct = net(cost, keypoints, knn_graph(keypoints, 5))
    permuted = net(cost[order], keypoints[order], knn_graph(keypoints[order], 5))
    torch.testing.assert_close(permuted, direct[order], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("graph, depends", [("edgeconv", True), ("none", False), ("coordinates", False)])
def test_only_edgeconv_passes_costs_between_neighbours(graph, depends):
    cost, keypoints, edges = _inputs()
    net = _net(graph)
    before = net(cost, keypoints, edges)
    neighbour = edges[0][edges[1] == 0][0]
    changed = cost.clone()
    changed[neighbour] = torch.rand(cost.shape[1], generator=torch.Generator().manual_seed(9))
    after = net(changed, keypoints, edges)
    assert (not torch.allclose(after[0], before[0], atol=1e-6)) == depends


def test_resize_cubes_matches_trilinear_interpolate():
    cubes = torch.rand(3, 2, 5, 5, 5, dtype=torch.float64)
    expected = F.interpolate(cubes, size=(9, 9, 9), mode="trilinear", align_corners=True)
    torch.testing.assert_close(resize_cubes(cubes, interpolation_matrix(5, 9).double()), expected)


def test_gradcheck_distribution_moments():
    logits = torch.randn(4, 27, dtype=torch.float64, requires_grad=True)
    candidates = candidate_displacements(1, 1.0).double()
    assert torch.autograd.gradcheck(lambda x: distribution_moments(x, candidates), (logits,))


def test_gradcheck_network_wrt_costs():
    torch.manual_seed(0)
    net = GraphRegNet(radius=1, step=1.0, k=3, features=4, encoder_channels=2, decoder_channels=2,
                      edgeconv_layers=1).double()
    torch.nn.init.normal_(net.decoder.out.weight, std=0.5)
    gen = torch.Generator().manual_seed(2)
    keypoints = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 10
    cost = torch.rand(6, 27, generator=gen, dtype=torch.float64, requires_grad=True)
    edges = knn_graph(keypoints, 3)
    assert torch.autograd.gradcheck(lambda c: net(c, keypoints, edges), (cost,), atol=1e-5)


def test_tps_operator_is_the_spline():
    gen = torch.Generator().manual_seed(0)
    keypoints = torch.rand(30, 3, generator=gen, dtype=torch.float64) * 20
    values = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    points = torch.rand(50, 3, generator=gen, dtype=torch.float64) * 20
    operator = tps_operator(keypoints, points, smoothing=0.5)
    expected = ThinPlateSpline(keypoints, values, 0.5)(points)
    torch.testing.assert_close(operator.double() @ values, expected, atol=1e-4, rtol=1e-4)


def test_keypoint_targets_remove_the_prealignment():
    grid = Grid((20, 20, 20), spacing=(2.0, 2.0, 2.0))
    truth_mm = np.array([3.0, -4.0, 5.0])  # x, y, z
    displacement = torch.from_numpy(grid.mm_vectors_to_voxel(truth_mm)).float().view(3, 1, 1, 1).expand(3, 20, 20, 20)
    translation = np.array([1.0, 1.0, -2.0])
    dummy = torch.zeros(1, 1, 20, 20, 20)
    pair = WorkingPair(dummy, dummy, dummy.bool(), dummy.bool(), grid, grid, translation)
    keypoints = torch.tensor([[5.0, 6.0, 7.0], [10.0, 11.0, 12.0]])
    target = keypoint_targets(pair, keypoints, displacement, grid)
    expected = grid.mm_vectors_to_voxel(truth_mm - translation)
    np.testing.assert_allclose(target.numpy(), np.tile(expected, (2, 1)), atol=1e-5)


def _synthetic_sample(seed=0, n=60):
    """Costs = squared distance from a smooth true displacement plus heavy noise."""
    gen = torch.Generator().manual_seed(seed)
    keypoints = torch.rand(n, 3, generator=gen) * 30
    truth = torch.stack([torch.sin(keypoints[:, 1] / 10), torch.cos(keypoints[:, 2] / 10),
                         keypoints[:, 0] / 30], 1) * 2
    candidates = candidate_displacements(RADIUS, 1.0)
    cost = ((candidates[None] - truth[:, None]) ** 2).sum(-1) / 10 + torch.rand(n, len(candidates), generator=gen)
    points = torch.rand(20, 3, generator=gen) * 30
    return KeypointGraphSample(keypoints=keypoints, cost=cost, target=truth, points=points,
                               fixed_features=torch.rand(20, 12, generator=gen),
                               tps_operator=tps_operator(keypoints, points, 0.1),
                               moving_features=torch.rand(12, 32, 32, 32, generator=gen).half(),
                               initial_error_mm=float(truth.norm(dim=1).mean()), spacing_mm=1.0)


def test_supervised_training_steps_lower_the_error():
    sample = _synthetic_sample()
    net = _net(live_decoder=False).train()
    loss_fn = graph_loss_fn("supervised")
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    first, _ = loss_fn(net, sample)
    for _ in range(30):
        optimiser.zero_grad()
        loss, parts = loss_fn(net, sample)
        loss.backward()
        optimiser.step()
    assert float(loss_fn(net, sample)[0]) < 0.8 * float(first)
    assert set(parts) == {"error_mm"}


def test_unsupervised_loss_has_gradients_everywhere_it_should():
    sample = _synthetic_sample()
    net = _net()
    loss, parts = graph_loss_fn("unsupervised", smoothness=0.1)(net, sample)
    loss.backward()
    assert set(parts) == {"similarity", "error_mm"}
    assert net.decoder.out.weight.grad.abs().sum() > 0 and net.edge_convs[0].nn[0].weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="supervision"):
        graph_loss_fn("weak")


def test_validation_reports_keypoint_error():
    sample = _synthetic_sample()
    result = graph_validation([sample])(_net())
    mean, _, _ = predict(_net(), sample)
    assert result["error_mm"] == pytest.approx(float((mean - sample.target).norm(dim=1).mean()), rel=1e-5)
    assert result["initial_mm"] == pytest.approx(sample.initial_error_mm)
    assert "classical_mm" not in result


def test_validation_compares_with_the_classical_regulariser():
    from graphreg.methods.keypoint.regularise import regularise_mst_bp

    sample = _synthetic_sample()
    config = load_config({"levels": [{"radius": RADIUS, "step": 1.0, "alpha": 1.0, "gamma": 5.0}]})
    result = graph_validation([sample], config)(_net())
    mean, _ = regularise_mst_bp(sample.cost, candidate_displacements(RADIUS, 1.0), sample.keypoints,
                                k=config.regulariser.k, alpha=1.0, gamma=5.0, inference=config.regulariser.inference)
    expected = float((mean - sample.target).norm(dim=1).mean())
    assert result["classical_mm"] == pytest.approx(expected, rel=1e-5)
    assert result["classical_mm"] < 0.5 * sample.initial_error_mm  # the noisy costs are regularised


def test_supervised_pool_keeps_only_what_the_supervised_loss_reads(tmp_path):
    from graphreg.methods.graphregnet.data import GraphTrainingData

    data = GraphTrainingData(tmp_path, load_config({}), pool_size=1, validation_size=0, image_loss=False)
    _synthetic_sample().save(data.path(0))
    light = data(0)
    assert all(getattr(light, name) is None for name in KeypointGraphSample.IMAGE_LOSS_FIELDS)
    torch.testing.assert_close(light.cost, _synthetic_sample().cost)
    loss, parts = graph_loss_fn("supervised")(_net(), light)
    assert torch.isfinite(loss) and set(parts) == {"error_mm"}
    full = GraphTrainingData(tmp_path, load_config({}), pool_size=1, validation_size=0)(0)
    torch.testing.assert_close(full.moving_features, _synthetic_sample().moving_features)


def test_pool_building_stops_at_its_deadline_and_continues_from_the_cache(tmp_path):
    import time

    from graphreg.methods.graphregnet.data import GraphTrainingData

    data = GraphTrainingData(tmp_path, load_config({}), pool_size=2, validation_size=1,
                             build_deadline=time.perf_counter())
    _synthetic_sample().save(data.path(0))
    data.prepare()  # past the deadline: sample 0 is loaded from the cache, 1 and 2 are not built
    assert data.missing() == 2 and sorted(p.name for p in (tmp_path / "graphs").iterdir()) == ["sample_0000.pt"]
    for index in (1, 2):
        _synthetic_sample(seed=index).save(data.path(index))
    data.prepare()
    assert data.missing() == 0
    torch.testing.assert_close(data.validation_samples()[0].target, _synthetic_sample(seed=2).target)


def test_training_spent_while_building_the_pool_stops_before_training(tmp_path):
    from typer.testing import CliRunner

    from graphreg.apps.cli import app

    result = CliRunner().invoke(app, ["train", "--config", "graphregnet", "--out", str(tmp_path),
                                      "--max-minutes", "1e-9", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "trained to step 0 (time limit: run the same command again to continue)" in result.output
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "graphs").exists()


def test_checkpoint_round_trip(tmp_path):
    net = _net("coordinates")
    save_checkpoint(tmp_path / "model.pt", net)
    loaded = load_model(tmp_path / "model.pt", "graphregnet")
    cost, keypoints, edges = _inputs()
    assert loaded.graph == "coordinates" and loaded.k == 5
    torch.testing.assert_close(loaded(cost, keypoints, edges), net(cost, keypoints, edges))


def test_learned_search_refuses_another_search_grid():
    level = load_config({"levels": [{"radius": RADIUS + 1, "step": 1.0}]}).levels[0]
    features = torch.rand(1, 12, 16, 16, 16)
    with pytest.raises(ConfigError, match="radius"):
        learned_search(_net(), features, features, torch.full((20, 3), 8.0), level)


def test_register_with_graphregnet_on_the_demo_pair(tmp_path):
    from graphreg import register
    from graphreg.datasets.pairs import read_pair
    from graphreg.apps.demo import DEMO_PAIR
    from graphreg.io.resources import preset_path
    from graphreg.ops.metrics import landmark_errors

    pair = read_pair(DEMO_PAIR)
    level = load_config(preset_path("lowres_3mm")).levels[0]
    torch.manual_seed(0)
    net = GraphRegNet(radius=level.radius, step=level.step)  # untrained: soft-argmin of the costs
    config = {**_yaml(preset_path("lowres_3mm")), "instance_opt": {"enabled": False}}
    result = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="graphregnet",
                      config=config, model=net)
    before = landmark_errors(pair.fixed_landmarks_mm, pair.moving_landmarks_mm).mean()
    after = landmark_errors(result.transform_points(pair.fixed_landmarks_mm), pair.moving_landmarks_mm).mean()
    assert after < 0.5 * before
    spread = result.keypoint_uncertainty_mm
    assert spread.shape == (len(result.keypoints_mm),) and np.isfinite(spread).all() and (spread > 0).all()
    result.save(tmp_path / "out")
    report = __import__("json").loads((tmp_path / "out" / "report.json").read_text())
    assert report["method"] == "graphregnet" and "keypoint_uncertainty_mm" in report
    blended = register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="graphregnet",
                       config={**config, "regulariser": {"blend": "mean"},
                               "densify": {"smoothing": 20.0, "confidence_weighting": True}}, model=net)
    errors = landmark_errors(blended.transform_points(pair.fixed_landmarks_mm), pair.moving_landmarks_mm)
    assert errors.mean() < 0.5 * before and np.isfinite(blended.keypoint_uncertainty_mm).all()
    wrong = GraphRegNet(radius=level.radius + 1, step=level.step)
    with pytest.raises(ConfigError, match="levels"):
        register(pair.fixed, pair.moving, pair.fixed_mask, pair.moving_mask, method="graphregnet",
                 config=config, model=wrong)


def _yaml(path):
    from graphreg.core.config import read_yaml

    return read_yaml(path)


def test_shipped_recipe_and_its_ablation_variants():
    from pathlib import Path

    from graphreg.training import read_recipe

    recipe_path = Path(__file__).resolve().parents[3] / "configs" / "graphregnet.yaml"
    base = read_recipe(recipe_path)
    assert base["architecture"] == "graphregnet" and "variants" not in base
    level = load_config(base["registration"]).levels[0]
    assert (base["model"]["radius"], base["model"]["step"]) == (level.radius, level.step)
    assert base["loss"]["supervision"] == "supervised" and base["data"]["sampler"]["realistic"]
    assert read_recipe(recipe_path, "one_anatomy")["loss"]["supervision"] == "unsupervised"
    assert not read_recipe(recipe_path, "one_anatomy_sup")["data"]["sampler"]["realistic"]
    assert read_recipe(recipe_path, "noedge")["model"]["graph"] == "none"
    assert read_recipe(recipe_path, "coords")["model"]["graph"] == "coordinates"
    with pytest.raises(ConfigError, match="no variant 'gat'"):
        read_recipe(recipe_path, "gat")


def test_shipped_weights_load_and_match_the_default_config():
    from graphreg.apps.bench.methods import GRAPHREGNET_ABLATIONS
    from graphreg.io.resources import asset_path
    from graphreg.training.checkpoint import default_weights

    net = load_model(default_weights("graphregnet"), "graphregnet")
    level = load_config({}).levels[0]
    assert (net.radius, net.step, net.graph) == (level.radius, level.step, "edgeconv")
    for name in GRAPHREGNET_ABLATIONS:  # every ablation the benchmark lists is shipped
        ablation = load_model(asset_path("graphregnet", "ablations", f"{name}.pt"), "graphregnet")
        assert (ablation.radius, ablation.step) == (level.radius, level.step)


def test_a_checkpoint_of_another_method_is_refused():
    from graphreg import register
    from graphreg.training.checkpoint import default_weights
    from graphreg.datasets.pairs import read_pair
    from graphreg.apps.demo import DEMO_PAIR

    pair = read_pair(DEMO_PAIR)
    with pytest.raises(GraphregError, match="'graphregnet' network"):
        register(pair.fixed, pair.moving, method="voxelmorph", model=default_weights("graphregnet"))
    with pytest.raises(GraphregError, match="expected a 'graphregnet' network"):
        register(pair.fixed, pair.moving, method="graphregnet", model=default_weights("voxelmorph"))


def test_blend_without_graphregnet_is_refused_before_any_work(tmp_path):
    from graphreg import register

    with pytest.raises(ConfigError, match="regulariser.blend.*graphregnet"):
        register(tmp_path / "missing_fixed.nii.gz", tmp_path / "missing_moving.nii.gz", method="corrfield",
                 config={"regulariser": {"blend": "choose"}})
