"""Every output of an analysis: the Writer protocol, the writer registry (which also generates the command-line
flags and the Slicer export), the formats it delegates to (DICOM SEG, meshes, point CSV, HTML/PDF), and the
output set that replaces OUTDIR's files all at once or not at all."""
