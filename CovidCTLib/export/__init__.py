"""Standard exports: surface meshes, the legacy point CSV and DICOM SEG."""
