"""Triage's AWS adapters: the champion model store, the images bucket and the scores table."""
