"""The phases wing: one module per workflow phase, each reading its inputs and writing its result files."""
