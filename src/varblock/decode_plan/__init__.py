"""Decode plans: the work list of one decode step (which CTA reads which KV chunks, split-KV, partial slots).

``worklist`` builds it on the host (NumPy, CPU-tested), ``plan`` uploads it with the split workspace; the format
constants shared with the kernel are in ``abi``.
"""

from varblock.decode_plan.plan import DecodePlan, plan_decode

__all__ = ["DecodePlan", "plan_decode"]
