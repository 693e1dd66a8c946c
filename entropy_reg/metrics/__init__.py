"""Pure metric functions on token ids, per-token entropies and teacher-forced logits (DESIGN.md).

No W&B, no Lightning here: tensors or lists in, floats/dicts out. The probe is the one function that
takes a model (it needs a forward pass). Imports only ``entropy_reg.models.find`` (``model_device``).
"""

from entropy_reg.metrics.entropy import (
    DEFAULT_LOW_ENTROPY_THRESHOLD,
    entropy_and_logsumexp,
    entropy_summary,
    low_entropy_run_length,
    token_entropy,
)
from entropy_reg.metrics.loops import (
    COLLAPSE_CLASSES,
    CollapseThresholds,
    Loop,
    collapse_class,
    detect_loop,
    eos_rate,
    hit_max_length_rate,
)
from entropy_reg.metrics.probe import (
    average_probe_results,
    multi_sentence_probe,
    plot_probe,
    self_reinforcement_probe,
)
from entropy_reg.metrics.repetition import (
    distinct_n,
    ditto_sentences,
    diversity,
    rep_n,
    sentence_repetition,
    seq_rep_n,
    split_sentences,
    uniq_seq,
)
from entropy_reg.metrics.teacher_forced import human_rep_l, rep_l, wrep_l

__all__ = [
    "COLLAPSE_CLASSES",
    "DEFAULT_LOW_ENTROPY_THRESHOLD",
    "CollapseThresholds",
    "Loop",
    "average_probe_results",
    "collapse_class",
    "detect_loop",
    "distinct_n",
    "ditto_sentences",
    "diversity",
    "entropy_and_logsumexp",
    "entropy_summary",
    "eos_rate",
    "hit_max_length_rate",
    "human_rep_l",
    "low_entropy_run_length",
    "multi_sentence_probe",
    "plot_probe",
    "rep_l",
    "rep_n",
    "self_reinforcement_probe",
    "sentence_repetition",
    "seq_rep_n",
    "split_sentences",
    "token_entropy",
    "uniq_seq",
    "wrep_l",
]
