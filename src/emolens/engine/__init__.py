"""The engine wing: running prompts through a model in batches, patched, attributed, edited or steered."""
