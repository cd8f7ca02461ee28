"""emolens: where and how language models represent emotion, and whether it is the same across models."""

from collections.abc import Iterable

__version__ = "0.1.0"

EMOTIONS: tuple[str, ...] = ("gratitude", "anger", "apology", "neutral")  # the built-in dataset's, the default


def emotion_order(labels: Iterable[str]) -> tuple[str, ...]:
    """The distinct emotions among ``labels`` in the one order every phase uses (vectors, matrices, files):
    the built-in four in their order, then any other alphabetically, so no file's line order changes it."""
    found = {str(e) for e in labels}
    return tuple(e for e in EMOTIONS if e in found) + tuple(sorted(found - set(EMOTIONS)))
