"""Device-side building blocks shared by the kernel families (build time only: the modules import ``cutlass``).

* :mod:`.signature` - one declaration of a kernel's parameters (``registry.Param`` list) gives the host
  ``@cute.jit`` signature and the kernel's argument namespace (lowered to the same flat ``.param`` list);
* :mod:`.work_tile` - a ``tiles`` row and its chunk run (full / partial classification with ``n_left``), the
  sequence it belongs to;
* :mod:`.scheduler` - single-tile and dynamic persistent (atomic counter, self-resetting) tile schedules;
* :mod:`.mask` - the element mask of partial chunks (causal / window / sinks / documents / token mask);
* :mod:`.softmax` - online softmax in base 2 (row max / sum, rescale, final normalisation and LSE);
* :mod:`.gmem_io` - predicated global -> shared loads of Q rows and K / V chunks, O and LSE stores for varlen tails;
* :mod:`.warp_mma` - mma.sync fragment views, quad reductions, the two GEMMs of an attention tile;
* :mod:`.warp_reduce` - warp-wide sums / minima / maxima and the inclusive lane scan, ``cdiv_nonneg``.

The package ``__init__`` imports no DSL (only :data:`SOURCES`), so listing variants never needs ``cutlass``.
"""

from pathlib import Path

#: the package's source files: families using these components list them among the sources that stamp their cubins
SOURCES = tuple(sorted(str(p) for p in Path(__file__).resolve().parent.glob("*.py")))
