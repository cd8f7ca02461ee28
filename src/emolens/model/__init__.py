"""The model wing: loading checkpoints behind one adapter, the demo organisms, architectures and memory plans."""
