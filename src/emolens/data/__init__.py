"""The data wing: the emotion dataset, its frames, card and surface features, and the readout prompt."""
