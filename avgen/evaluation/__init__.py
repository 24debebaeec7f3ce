"""``python -m avgen evaluate``: score a folder of generated sounding videos (or a prepared split).

- :mod:`avgen.evaluation.evaluate`: :func:`evaluate` (the ``evaluate`` config block as one mapping) and
  :func:`evaluate_folder` (the same as keywords): find the clips, score them, merge the processes'
  results, write ``metrics.json`` and ``per_clip.csv``;
- :mod:`avgen.evaluation.scorers`: one scorer per metric and the registry that builds them;
- :mod:`avgen.evaluation.references`: the reference clips of every metric that compares with ``evaluate.ref_dir``,
  their features through the feature store (:mod:`avgen.data.feature_store`);
- :mod:`avgen.evaluation.processes`: torchrun processes, the AV-Align worker pool;
- :mod:`avgen.evaluation.clip_scorer`: per-clip scores for ``python -m avgen filter``.
"""

from avgen.evaluation.clip_scorer import ClipScorer
from avgen.evaluation.evaluate import EvaluateSettings, EvaluationResult, evaluate, evaluate_folder, split_list
from avgen.evaluation.scorers import AVAILABLE, PER_CLIP, SCORERS

__all__ = ["AVAILABLE", "PER_CLIP", "SCORERS", "ClipScorer", "EvaluateSettings", "EvaluationResult", "evaluate",
           "evaluate_folder", "split_list"]
