"""Erasure metrics: pure functions of embeddings and labels (numpy + scikit-learn only).

Embeddings are compared by cosine: every function L2-normalises rows itself, so callers may pass
raw encoder outputs. Low-level functions return fractions in ``[0, 1]``; :func:`membership_inference`
returns a percentage (50 = ideal), and :class:`ErasureReport` stores every metric in percent so its
numbers read like the tables in esc-method.md.

One module per concept: ``inputs`` (the checks), ``identification``, ``verification``,
``attacks`` (membership inference, the template leak), ``probes`` (the enrolment / probe split)
and ``report`` (the erasure report); their public names are importable from here. The package
imports nothing else from the project; an erasure is duck-typed (anything with
``apply(E) -> (n, d)`` normalised embeddings).
"""

from facekd.core.metrics.attacks import (MIA_MIN_PER_CLASS, membership_inference, mia_features,
                                         template_leak)
from facekd.core.metrics.identification import (KnowledgeRetention, identification_hits,
                                                identification_rate, knowledge_retention)
from facekd.core.metrics.inputs import MetricsError
from facekd.core.metrics.probes import split_enrol_probe
from facekd.core.metrics.report import ErasureReport, erasure_report
from facekd.core.metrics.verification import (far_threshold, pair_scores, tar_at_far,
                                              wilson_interval)

__all__ = [
    "MetricsError", "identification_hits", "identification_rate", "pair_scores", "tar_at_far",
    "KnowledgeRetention", "far_threshold", "knowledge_retention", "membership_inference", "mia_features",
    "split_enrol_probe", "ErasureReport", "erasure_report", "template_leak", "wilson_interval",
    "MIA_MIN_PER_CLASS",
]
