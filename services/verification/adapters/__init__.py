"""Verification's AWS adapters: the case store (cases and labels tables), degradation alarms, heatmap URLs."""
