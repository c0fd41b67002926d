"""Binaural localization datasets for BAST: building, importing, reading and on-the-fly rendering."""
