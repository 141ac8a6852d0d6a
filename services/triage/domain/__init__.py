"""Triage domain logic: applicability, inputs, the champion model, micro-batching, Grad-CAM."""
