"""Lightning data module over the data layer: reads, splits, builds graphs, batches.

The training loader is stateful (``state_dict``/``load_state_dict``): its shuffling order depends
only on (seed, epoch), and a mid-epoch checkpoint records how many batches were consumed, so a
resumed run sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

from typing import Iterator

import lightning as L
import torch
from torch.utils.data import Sampler, Subset
from torch_geometric.loader import DataLoader

from frameavg.data.budget import BudgetBatchSampler, MemoryBudget
from frameavg.data.splits import random_split
from frameavg.errors import ConfigError, DataError
from frameavg.training.config_sections import DataConfig, TargetsConfig
from frameavg.training.network import graph_transform  # noqa: F401  (also its old place)


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(n)`` drawn from ``seed + epoch`` (Lightning calls
    ``set_epoch``); under DDP each rank takes its shard; can skip a prefix of batches."""

    def __init__(self, n: int, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=generator)
        rank, world = _rank_and_world()
        if world > 1:  # same permutation on every rank, padded to a multiple of world, then sharded
            order = torch.cat([order, order[: (-self.n) % world]])[rank::world]
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        return iter(order[start:].tolist())

    def __len__(self) -> int:
        return -(-self.n // _rank_and_world()[1])


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ResumableLoader(DataLoader):
    """PyG ``DataLoader`` whose position in the epoch survives checkpoints.

    Lightning saves ``state_dict()`` in mid-epoch checkpoints (the number of batches consumed)
    and restores it on resume; the next iteration then skips those batches of the same
    (seed, epoch) permutation.
    """

    def __init__(self, dataset, batch_size: int, seed: int, resume: dict | None = None, **kwargs):
        self.epoch_sampler = EpochSeededSampler(len(dataset), seed, batch_size)
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler, **kwargs)
        self.consumed = 0
        self._resumed = False
        if resume is not None:
            self.load_state_dict(resume)

    def __iter__(self):
        if not self._resumed:
            self.consumed = 0
        self._resumed = False
        self.epoch_sampler.skip_batches = self.consumed
        for batch in super().__iter__():
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "epoch": self.epoch_sampler.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Continue at batch ``consumed`` of ``epoch`` (the next epoch if that one was finished)."""
        epoch, consumed = int(state.get("epoch", 0)), int(state["consumed"])
        if consumed >= len(self):
            epoch, consumed = epoch + 1, 0
        self.epoch_sampler.set_epoch(epoch)
        self.consumed = consumed
        self._resumed = True


class AtomisticDataModule(L.LightningDataModule):
    """Train/val/test datasets from the ``data`` section of a training config."""

    def __init__(self, data: DataConfig, targets: TargetsConfig, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg, self.targets, self.seed = data, targets, seed
        self.dtype = dtype  # float64 for precision 64-true
        self.train_set = self.val_set = self.test_set = None
        #: position of the train loader when resuming (``ResumableLoader.state_dict()``); set
        #: before ``fit`` because Lightning creates the loader's iterator before restoring state
        self.resume_loader_state: dict | None = None
        #: memory budget of validation and test batches (``data.budget``; set by the training run
        #: from its network): batches of at most ``eval_batch_size`` structures that fit it
        self.eval_budget: MemoryBudget | None = None

    def required_labels(self) -> tuple[str, ...]:
        return self.targets.enabled

    def read(self, path):
        """A dataset with graphs: in-memory files get their edges once here, LMDBs on access."""
        from frameavg.data import StructureDataset, open_dataset

        transform = self.cfg.neighbors.transform()
        dataset = open_dataset(path, self.cfg.format, transform=transform, keys=self.cfg.keys or None,
                               required=self.required_labels(), trusted=self.cfg.trusted,
                               dtype=self.dtype, **self.cfg.options)
        if isinstance(dataset, StructureDataset):
            return StructureDataset([dataset[i] for i in range(len(dataset))])
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None or stage in ("test", "predict"):
            if stage == "test" and self.test_set is None and self.cfg.test:
                self.test_set = self.read(self.cfg.test)
            return
        if not self.cfg.train:
            raise ConfigError("data.train is not set: give the path of the training structures")
        full = self.read(self.cfg.train)
        sizes = {}  # held-out splits drawn from the training file, the rest trains
        if not self.cfg.val:
            sizes["val"] = max(1, round(self.cfg.val_fraction * len(full)))
        if not self.cfg.test and self.cfg.test_fraction:
            sizes["test"] = max(1, round(self.cfg.test_fraction * len(full)))
        if sum(sizes.values()) >= len(full):
            raise DataError(f"{self.cfg.train}: {len(full)} structures are too few to split off {sizes}")
        split = random_split(len(full), sizes | {"train": None}, seed=self.cfg.split_seed)
        self.val_set = Subset(full, split["val"].tolist()) if "val" in split else self.read(self.cfg.val)
        if "test" in split:
            self.test_set = Subset(full, split["test"].tolist())
        elif self.cfg.test:
            self.test_set = self.read(self.cfg.test)
        train_idx = split["train"]
        if self.cfg.max_train:
            train_idx = train_idx[: self.cfg.max_train]
        self.train_set = Subset(full, train_idx.tolist())

    def train_dataloader(self):
        return ResumableLoader(self.train_set, self.cfg.batch_size, self.seed, resume=self.resume_loader_state,
                               num_workers=self.cfg.num_workers, drop_last=False)

    def val_dataloader(self):
        return self._eval_loader(self.val_set, "validation set", self.cfg.val)

    def test_dataloader(self):
        return self._eval_loader(self.test_set, "test set", self.cfg.test)

    def check_budgets(self, net) -> None:
        """Before the first step: set ``eval_budget`` from ``net`` and refuse (one-line error) a
        training batch size, or a validation/test structure, that does not fit (``data.budget``)."""
        from frameavg.data.budget import check_training_batches

        check_training_batches(self.train_set, MemoryBudget.for_config(net, self.cfg, training=True),
                               self.cfg.batch_size)
        self.eval_budget = MemoryBudget.for_config(net, self.cfg)
        for loader in (self.val_dataloader(), self.test_dataloader() if self.test_set else None):
            if loader is not None:
                loader.batch_sampler.batches()

    def _eval_loader(self, dataset, name: str, path) -> DataLoader:
        """Batches in order, of at most ``eval_batch_size`` structures within ``eval_budget``."""
        source = f"{name} ({path or 'split of ' + str(self.cfg.train)})"
        sampler = BudgetBatchSampler(dataset, self.eval_budget, self.cfg.eval_batch_size, source=source)
        return DataLoader(dataset, batch_sampler=sampler)
