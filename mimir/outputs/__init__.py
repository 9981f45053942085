"""Outputs: predictions written as CSV, JSON and terminal tables; the image preview PNG.

- :mod:`~mimir.outputs.writers`: CSV / JSON / Rich tables of :class:`~mimir.inference.predictions.SubjectResult`;
- :mod:`~mimir.outputs.preview`: a preprocessed image as a labelled PNG (channel names, subject, QC flags);
- :mod:`~mimir.outputs.figures`: matplotlib figures (saliency overlays, histograms; the ``report`` extra).
"""
