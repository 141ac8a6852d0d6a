"""DICOM helpers shared by services: safe parsing, pixel transcoding, DICOM JSON, de-identification."""
