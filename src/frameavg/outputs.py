"""Names of model outputs and labels, in one place.

Every model returns a dict keyed by these names; FrameAveraging, the training module, the metrics,
the ASE calculator and the relaxation engine read them from here.

=================  ==========  =============================================================
name               shape       meaning
=================  ==========  =============================================================
``energy``         [B]         eV
``forces``         [N,3]       eV/Å: the forces a caller asked for (conservative −∂E/∂x, or a
                               model's direct head)
``gradient_forces``[N,3]       eV/Å: −∂E/∂x when ``forces`` holds a direct head's prediction
``stress``         [B,3,3]     eV/Å³, ASE's sign: (1/V) ∂E/∂ε (positive under tension)
``virial``         [B,3,3]     eV: −∂E/∂ε
=================  ==========  =============================================================
"""

from __future__ import annotations

ENERGY = "energy"
FORCES = "forces"
GRADIENT_FORCES = "gradient_forces"
STRESS = "stress"
VIRIAL = "virial"

#: Per-atom vector outputs, rotated back by FrameAveraging.
VECTOR_OUTPUTS = (FORCES, GRADIENT_FORCES)
#: Per-graph rank-2 tensor outputs, rotated back as U T Uᵀ.
TENSOR_OUTPUTS = (STRESS, VIRIAL)
