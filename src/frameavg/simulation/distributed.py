"""Sharding batched work (relaxations) over processes or nodes with Lightning's launcher.

``start(devices, accelerator)`` returns a ``Shard`` (rank, world size, device). With one device
and no launcher environment it is a single process; otherwise Lightning Fabric's DDP launcher
starts (or, under torchrun/SLURM, joins) the processes, exactly as ``frameavg train
--trainer.devices N --trainer.strategy ddp`` does. Each rank works on ``indices[rank::world]``;
``gather`` brings the results to rank 0 in input order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Shard:
    rank: int
    world: int
    device: str
    distributed: bool = False

    def indices(self, count: int) -> list[int]:
        """The items of ``range(count)`` this rank handles."""
        return list(range(self.rank, count, self.world))

    def gather(self, indices: list[int], results: list, count: int) -> list | None:
        """All ranks' results in input order on rank 0 (None on the others)."""
        if not self.distributed:
            merged = [None] * count
            for i, r in zip(indices, results):
                merged[i] = r
            return merged
        parts = [None] * self.world if self.rank == 0 else None
        torch.distributed.gather_object(list(zip(indices, results)), parts, dst=0)
        if self.rank != 0:
            return None
        merged = [None] * count
        for part in parts:
            for i, r in part:
                merged[i] = r
        return merged

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def start(devices: int = 1, accelerator: str = "cpu", num_nodes: int = 1) -> Shard:
    """One process, or the ranks of a DDP launch (see the module docstring)."""
    launched = "WORLD_SIZE" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if devices <= 1 and num_nodes <= 1 and not launched:
        return Shard(0, 1, "cuda" if accelerator == "cuda" else "cpu")
    from lightning.fabric import Fabric

    if launched and "LOCAL_WORLD_SIZE" in os.environ:
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        num_nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    fabric = Fabric(accelerator="cuda" if accelerator == "cuda" else "cpu", devices=devices, num_nodes=num_nodes,
                    strategy="ddp")
    fabric.launch()
    device = f"cuda:{fabric.local_rank}" if accelerator == "cuda" else "cpu"
    return Shard(fabric.global_rank, fabric.world_size, device, distributed=True)
