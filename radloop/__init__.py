"""The radloop command line and the local runtime (embedded AWS, process supervisor, entry proxy)."""
