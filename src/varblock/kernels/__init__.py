"""CuTe DSL kernel sources and the variant registry (imported by build_kernels.py and build-time tests only)."""
