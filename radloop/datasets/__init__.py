"""``radloop import-dataset``: import a public chest radiograph dataset that the user downloaded.

- :mod:`radloop.datasets.formats`: each dataset's published layout (RSNA Pneumonia, NIH ChestX-ray14, CheXpert) read
  into :class:`~radloop.datasets.formats.Item` s, with the mapping of its labels to radloop's pneumonia finding;
- :mod:`radloop.datasets.wrap`: a PNG or JPEG wrapped as a DICOM Secondary Capture instance (pydicom), with the
  dataset's patient id, age and sex where DICOM keeps them, so that ingestion's de-identification handles them;
- :mod:`radloop.datasets.importer`: STOW-RS to ingestion and the label to verification (``PUT
  /verification/cases/{id}/imported-label``), bounded concurrency, a resumable journal, ``--limit``;
- :mod:`radloop.datasets.cli`: the command. docs/datasets.md is the user's guide.
"""
