"""The report wing: verification checks, findings, figures, result loading, timing and the model-type table."""
