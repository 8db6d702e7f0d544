"""The results report: the models × presets table, training and calibration summaries,
provenance (``results``), and its plots (``plots``). No model runs here."""
