"""Public operations: validate inputs, pick a variant, allocate outputs, launch."""
