import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.errors import DataError
from frameavg.models import FAENet


def test_dtype_mismatch_is_a_clear_error():
    structures = [RadiusGraph(6.0)(d) for d in read_structures("shipped:oc20_is2re/bs3")]
    model = FAENet(num_interactions=1).double()
    with pytest.raises(DataError, match="positions are torch.float32 but the model is torch.float64"):
        model(Batch.from_data_list(structures))
    structures64 = [RadiusGraph(6.0)(d) for d in read_structures("shipped:oc20_is2re/bs3", dtype=torch.float64)]
    assert model(Batch.from_data_list(structures64))["energy"].dtype == torch.float64


def test_faenet_rejects_nan_positions_like_every_energy_model_and_never_touches_the_callers_batch():
    from frameavg.models.base import EnergyModel

    structures = [RadiusGraph(6.0)(d) for d in read_structures("shipped:oc20_is2re/bs3")][:2]
    model = FAENet(num_interactions=1, regress_forces="from_energy")
    assert isinstance(model, EnergyModel) and model.max_neighbors == 40
    batch = Batch.from_data_list(structures)
    model(batch)
    assert not batch.pos.requires_grad  # differentiated through a detached copy
    broken = batch.clone()
    broken.pos = broken.pos.clone()
    broken.pos[0, 0] = float("nan")
    with pytest.raises(DataError, match="positions contain NaN or inf"):
        model(broken)


def test_max_num_neighbors_is_the_originals_name_for_max_neighbors():
    from frameavg.errors import ConfigError

    assert FAENet(max_num_neighbors=12).max_neighbors == 12
    assert FAENet(max_neighbors=12).max_neighbors == 12
    with pytest.raises(ConfigError, match="disagree"):
        FAENet(max_neighbors=12, max_num_neighbors=30)


@pytest.mark.parametrize("name", ["faenet", "painn"])
def test_direct_with_gradient_target_adds_detached_gradient_forces_in_training(name):
    from frameavg.models import build_model
    from frameavg.outputs import FORCES, GRADIENT_FORCES

    structures = [RadiusGraph(6.0)(d) for d in read_structures("shipped:oc20_is2re/bs3")][:2]
    batch = Batch.from_data_list(structures)
    small = dict(hidden_channels=128 if name == "faenet" else 32, num_interactions=1,
                 regress_forces="direct_with_gradient_target")
    model = build_model(name, **small)
    out = model.train()(batch)
    assert out[FORCES].shape == out[GRADIENT_FORCES].shape == batch.pos.shape
    assert not out[GRADIENT_FORCES].requires_grad and out[FORCES].requires_grad
    assert GRADIENT_FORCES not in model.eval()(batch)
    assert GRADIENT_FORCES in model(batch, compute_gradient_forces=True)
