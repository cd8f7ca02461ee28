"""The stats wing: resampling by frame, similarity, probes, erasure, effects and steering statistics."""
