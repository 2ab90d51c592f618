"""Derive shipped cost profiles from published GPU measurements.

``sim.calibration.vidur`` reads microsoft/vidur's profiling CSVs (MIT licence; commit 7d47513,
see ``shared/calibration/SOURCES.md``) and holds the fitting helpers; ``sim.calibration.derive``
turns them into ``profiles/<gpu>/<model>.json``::

    python -m sim.calibration.derive --calibration CALIBRATION --out profiles/

The CSVs themselves never enter the repository; only fitted figures do, with their source named
in each profile. This package needs pandas and scipy; the simulator never imports it.
"""
