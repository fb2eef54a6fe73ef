"""Overrides shared by the training tests: a one-block FAENet on shipped rMD17 ethanol frames."""

TINY_MODEL = [
    "model.hidden_channels=32", "model.num_filters=16", "model.num_gaussians=8", "model.num_interactions=1",
    "model.tag_hidden_channels=0", "model.pg_hidden_channels=8", "model.phys_embeds=false",
    "model.regress_forces=direct", "model.cutoff=4.0",
]
ETHANOL = ["data.train=shipped:rmd17_ethanol/train", "data.cutoff=4.0", "targets.forces=true",
           "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
           "trainer.threads=1"]  # pinned: runs compared with each other use the same float reductions
