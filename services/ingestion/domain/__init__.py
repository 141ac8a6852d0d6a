"""Pure ingestion logic: parsing, de-identification, transcoding (in the CPU pool)."""
