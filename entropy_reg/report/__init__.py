"""Comparison reports: ``entropy-reg compare BASELINE CANDIDATE`` (see :mod:`entropy_reg.report.cli`).

Programmatic use::

    from entropy_reg.report import CompareConfig, compare_models, write_report
    cmp = compare_models(CompareConfig(baseline="runs/base.ckpt", candidate="runs/reg.ckpt"))
    write_report(cmp, Path("compare_out"))

    from entropy_reg.report import EvalConfig, evaluate_model      # one model: `entropy-reg eval MODEL`
    evaluate_model("runs/reg.ckpt", EvalConfig()).summary()

Names are imported lazily: ``entropy_reg.report.bootstrap`` (pure numpy) must not pull in
transformers and Lightning through this package's ``__init__``. May import ``models``, ``generation``,
``metrics``, ``data.formatting``, ``training.wandb_env`` and ``errors``; nothing imports it but ``cli``.
"""

from typing import Any

__all__ = ["CompareConfig", "Comparison", "EvalConfig", "ModelEvaluation", "compare_models", "evaluate_model",
           "pair_evaluations", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("CompareConfig", "Comparison", "compare_models"):
        from entropy_reg.report import compare

        return getattr(compare, name)
    if name in ("EvalConfig", "ModelEvaluation", "evaluate_model", "pair_evaluations"):
        from entropy_reg.report import evaluate

        return getattr(evaluate, name)
    if name == "write_report":
        from entropy_reg.report.write import write_report

        return write_report
    raise AttributeError(f"module 'entropy_reg.report' has no attribute {name!r}")
