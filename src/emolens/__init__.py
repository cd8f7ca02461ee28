"""emolens: where and how language models represent emotion, and whether it is the same across models."""

__version__ = "0.1.0"

EMOTIONS: tuple[str, ...] = ("gratitude", "anger", "apology", "neutral")
