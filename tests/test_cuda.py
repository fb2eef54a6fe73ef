"""CUDA checks (marked ``cuda``, skipped without a GPU; ``benchmarks/gpu_check.sh`` runs them):
every model, the frames, ``FrameAveraging``, a few training steps, the calculator and a batched
relaxation on the GPU against the same computation on the CPU, in float32 and mixed precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data.neighbors import RadiusGraph
from frameavg.frames import FrameAveraging
from frameavg.frames.compute import compute_frames
from frameavg.frames.methods import FrameMethod

from models.baselines import molecules, slabs
from models.test_precision import SMALL, TOLERANCES, relative_error, small_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
CUTOFF = 5.0


@pytest.fixture(scope="module")
def batches(real_data):
    graph = RadiusGraph(CUTOFF)
    return {"molecules": Batch.from_data_list([graph(d.clone()) for d in molecules(real_data, torch.float32)]),
            "slabs": Batch.from_data_list([graph(d.clone()) for d in slabs(real_data, torch.float32, count=2)])}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_models_on_cuda_match_the_cpu_in_float32_and_mixed_precision(name, batches):
    cpu_net = FrameAveraging(small_model(name), dims="3D", method="all", cutoff=CUTOFF)
    gpu_net = FrameAveraging(small_model(name), dims="3D", method="all", cutoff=CUTOFF).cuda()
    energy_tol, forces_tol, _ = TOLERANCES[name]
    for batch in batches.values():
        reference = cpu_net(batch)
        on_gpu = gpu_net(batch.cuda())
        for key in ("energy", "forces"):
            assert relative_error(on_gpu[key].cpu(), reference[key]) < 1e-4
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cuda", dtype=dtype):
                low = gpu_net(batch.cuda())
            assert low["energy"].dtype == torch.float32
            assert relative_error(low["energy"].cpu(), reference["energy"]) < energy_tol
            assert relative_error(low["forces"].cpu(), reference["forces"]) < forces_tol


def test_frames_on_cuda_equal_the_cpu_frames(batches):
    batch = batches["slabs"]
    method = FrameMethod.parse("all", "3D")

    def frames(b):
        return compute_frames(b.pos.double(), b.batch, b.num_graphs, method=method, cell=b.cell.double(),
                              atomic_numbers=b.atomic_numbers, edge_index=b.edge_index,
                              cell_offsets=b.cell_offsets, cutoff=CUTOFF)

    cpu, gpu = frames(batch), frames(batch.cuda())
    torch.testing.assert_close(gpu.rotation.cpu(), cpu.rotation, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gpu.pos.cpu(), cpu.pos, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_training_steps_on_the_gpu(precision, tmp_path):
    from frameavg.training.config import load_config
    from frameavg.training.run import train
    from tiny import ETHANOL, TINY_MODEL

    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=32", "data.val_fraction=0.01", "data.batch_size=8", "optim.max_epochs=2",
        "data.test=shipped:rmd17_ethanol/test", "trainer.accelerator=gpu", f"trainer.precision={precision}",
        f"run_dir={tmp_path}", "name=gpu"])
    result = train(config)
    assert np.isfinite(result["test"]["energy_mae"]) and np.isfinite(result["test"]["forces_mae"])


def test_calculator_and_relaxation_on_the_gpu(real_data):
    import ase.io

    from frameavg.simulation import FrameavgCalculator
    from frameavg.simulation.potential import Potential
    from frameavg.simulation.relaxation import relax

    model = FrameAveraging(small_model("faenet"), dims="2D", method="all", cutoff=CUTOFF)
    atoms = ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":2")
    energies = {}
    for device in ("cpu", "cuda"):
        calc = FrameavgCalculator(model=model, cutoff=CUTOFF, device=device, dtype="float32")
        probe = atoms[0].copy()
        probe.calc = calc
        energies[device] = (probe.get_potential_energy(), probe.get_forces())
    assert abs(energies["cuda"][0] - energies["cpu"][0]) < 1e-3
    np.testing.assert_allclose(energies["cuda"][1], energies["cpu"][1], atol=1e-3)
    results = {device: relax([a.copy() for a in atoms], Potential(model, cutoff=CUTOFF, device=device,
                                                                  dtype="float32"), fmax=0.05, steps=20)
               for device in ("cpu", "cuda")}
    for cpu_result, gpu_result in zip(results["cpu"], results["cuda"]):
        assert gpu_result.info["status"] in ("converged", "not converged")
        assert abs(gpu_result.info["energy"] - cpu_result.info["energy"]) < 1e-2
