"""What each trajectory metric means and which way is better: the one table the report prints and the ranking reads.

Symbols follow DESIGN.md (Metrics): R[i, j] is the accuracy on stage j's eval set after stage i, row 0 the base model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDef:
    """What a trajectory metric means (one sentence, shown in the report) and whether higher is better."""

    higher_is_better: bool
    text: str


FORGETTING_TEXT = {
    "since_trained": "mean over j < t of (max over j <= l < t of R[l,j]) - R[t,j]: the best accuracy on stage j since it "
    "was trained, minus now (the usual continual-learning reading of Chaudhry et al. 2018).",
    "any_earlier": "mean over j < t of (max over 1 <= l < t of R[l,j]) - R[t,j] (Chaudhry et al. 2018 as written: "
    "accuracy reached through transfer before stage j was trained counts too).",
}

# Every trajectory metric, in report order.
DEFINITIONS: dict[str, MetricDef] = {
    "immediate": MetricDef(True, "R[t,t]: accuracy on stage t's eval set right after training on stage t."),
    "gain": MetricDef(True, "R[t,t] - R[t-1,t]: what stage t taught (a selector that learns nothing forgets nothing)."),
    "acc": MetricDef(True, "mean over j <= t of R[t,j]: average accuracy on the stages seen so far (ACC_T at T)."),
    "forgetting": MetricDef(False, FORGETTING_TEXT["since_trained"]),
    "bwt": MetricDef(True, "mean over i < t of R[t,i] - R[i,i]: backward transfer (GEM, Lopez-Paz & Ranzato 2017)."),
    "fwt": MetricDef(
        True, "mean over 2 <= i <= t of R[i-1,i] - R[0,i]: forward transfer against the base model (GEM)."
    ),
    "lca": MetricDef(
        True, "mean probe accuracy over probe steps 0..beta on stage t+1's eval set, from checkpoint t (LCA_beta)."
    ),
    "steps_to_threshold": MetricDef(
        False,
        "first probe step whose accuracy reaches the threshold; a seed that never reaches it is censored at probe "
        "steps + 1 (read reached_threshold beside it).",
    ),
    "reached_threshold": MetricDef(
        True, "1 if the probe reached the threshold, else 0; its mean is the share of seeds."
    ),
    "imbalance_range": MetricDef(
        False, "max - min of per-skill accuracy over every skill of the general set (all skills, targeted or not)."
    ),
    "imbalance_cv": MetricDef(
        False, "population std / mean of per-skill accuracy over every skill of the general set."
    ),
    "untrained_retention": MetricDef(
        True,
        "mean accuracy on the never-targeted skills of the general set after stage t, divided by the base model's "
        "(1 = kept what the warm-up taught; below 1 = lost some).",
    ),
    "ood_acc": MetricDef(True, "mean accuracy over the OOD sets of stages 1..t (the stages trained so far)."),
    "ood_gap": MetricDef(False, "acc - ood_acc: in-distribution minus out-of-distribution accuracy, stages 1..t."),
    "lm_eval_acc": MetricDef(
        True, "mean accuracy over the lm-eval tasks (eval sets lm_eval/<task>, evaluation.lm_eval) after stage t."
    ),
    "lm_eval_delta": MetricDef(
        True,
        "mean over the lm-eval tasks of accuracy after stage t minus the base model's: the general ability delta of "
        "TRACE (Wang et al. 2023); below 0 = general ability forgotten.",
    ),
}
LM_EVAL_PREFIX = "lm_eval/"  # eval sets of lm-evaluation-harness tasks (evaluation.lm_eval): lm_eval/<task>
HIGHER_IS_BETTER: dict[str, bool] = {m: d.higher_is_better for m, d in DEFINITIONS.items()}
METRICS: tuple[str, ...] = tuple(DEFINITIONS)
MATRIX_METRICS: tuple[str, ...] = ("immediate", "gain", "acc", "forgetting", "bwt", "fwt")
# metrics judged "later": everything but the immediate ones
LONG_HORIZON: tuple[str, ...] = tuple(m for m in METRICS if m not in ("immediate", "gain"))
# shown beside another metric, never tested on their own (reached_threshold explains steps_to_threshold's censoring)
COMPANIONS: frozenset[str] = frozenset({"reached_threshold"})


def definitions(forgetting: str = "since_trained") -> dict[str, str]:
    """Each metric's definition text, as the code computes it for this forgetting variant."""
    out = {m: d.text for m, d in DEFINITIONS.items()}
    out["forgetting"] = FORGETTING_TEXT[forgetting]
    return out
