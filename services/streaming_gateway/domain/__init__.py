"""Domain logic of the streaming gateway: index reads, QIDO matching, media negotiation, frames, rendering."""
