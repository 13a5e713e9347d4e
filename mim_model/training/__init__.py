"""Training, evaluation and prediction for MiM-ISTD on SIRST-layout data.

Modules
-------
metrics     IRSTD metrics (IoU, nIoU, Pd, Fa), pure numpy.
preprocess  the one normalisation the network is fed with (``to_model_input``).
data        SIRST-layout datasets: split files, loading, augmentation.
loss        SoftIoU (and SoftIoU + BCE).
inference   padding to a multiple of 64, tiling of big images, probabilities.
train       ``TrainConfig``, ``train`` (checkpoints, resume, time budget), ``export``.
distributed data-parallel training over torchrun processes (one per GPU).
evaluate    ``evaluate`` a weights file on a split.
predict     ``predict`` masks for image files.
refine      fit the outline refiner (:mod:`mim_model.refiner`) to a network's probabilities.
flip_agreement  keep only detections every flipped pass also finds (``--flip-agreement``).
synthetic   synthetic training crops: SIRST targets pasted on land and thermal backgrounds.
clutter     the procedural land clutter behind those targets.

The heavy modules (torch, the network) are imported by the submodules, not here.
"""

from __future__ import annotations

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
