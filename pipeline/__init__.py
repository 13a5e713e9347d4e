"""irscan's scan pipeline: tile georeferenced scenes, run MiM-ISTD, stitch and write."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
