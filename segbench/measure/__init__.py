"""Measurements, one concern per module; each is a function (model, inputs, cfg) -> dict."""
