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
