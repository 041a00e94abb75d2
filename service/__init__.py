"""heatrec runtime: configuration, model, bus, storage, API and the composition root."""
