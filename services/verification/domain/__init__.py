"""Verification domain logic: the case state machine, reading rules, worklist ordering, performance metrics."""
