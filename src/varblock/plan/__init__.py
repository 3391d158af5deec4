"""Plans: the per-batch-shape work description the attention kernels read, computed once and reused by every layer.

* :mod:`~varblock.plan.core`: the :class:`Plan` object (work description + its device buffers, nothing else);
* :mod:`~varblock.plan.api`: ``plan(...)``, argument checks, kernel-family choice, the plan cache;
* :mod:`~varblock.plan.host` / :mod:`~varblock.plan.device`: work lists built on the host or by the prepare kernel;
* :mod:`~varblock.plan.schedule`: single-tile or persistent schedule;
* :mod:`~varblock.plan.seqlens`: cu_seqlens arguments (validated in one place).
"""

from varblock.plan.api import clear_cache, plan
from varblock.plan.core import Plan

__all__ = ["Plan", "clear_cache", "plan"]
