"""MODEL_CARD.md and the known faults and limits every model ships with (written before it ships)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KNOWN_FAULTS = (
    "A newly compromised terminal is scored as clean until its first fraud labels arrive: `term_fresh_risk_*` "
    "sees labels as they are reported, `term_risk_*` only after the label delay. With every label 7 days late "
    "(the Fraud Detection Handbook's data, benchmarks/quality.py) compromised-terminal fraud was 69 % of the "
    "test frauds and scored ROC AUC 0.82 against genuine transactions (card and amount fraud: 0.98 and 1.00); "
    "29 % of it came before any fraud on its terminal was known.",
    "Labels count from the day close after their report, so a fraud reported in the morning reaches terminal "
    "risk up to a day later than it could.",
    "A card's first transactions have no history (`cust_amount_ratio_*` = -1, `cust_seconds_since_last` at its "
    "30-day cap), so fraud on a brand-new card is judged on amount and terminal alone.",
    "Trained on simulated data with three fraud scenarios (amount above a fixed limit, compromised terminals, "
    "compromised cards with inflated amounts); other fraud patterns are not represented.",
    "`currency`, `channel` and `merchant_category` carry no fraud signal in the training data; a value never seen "
    "in training is encoded as -2 and has no learned effect.",
    "Scores come from a model fitted on all frauds and a weighted sample of genuine transactions: they rank well "
    "but are only approximately calibrated probabilities.",
)
LIMITS = (
    "The threshold follows an alert budget on the validation period: when traffic grows, so does the number of "
    "flags; re-derive the threshold (retrain) rather than expecting a fixed daily count.",
    "Windows are day buckets: customer windows count their oldest day pro rata, terminal windows cover whole "
    "closed days, so both approximate exact rolling windows (identically offline and online).",
    "Events more than 2 days older than the stream's oldest recent event are scored with partial windows.",
    "A fraud label delivered twice is counted twice in terminal risk; labels are assumed unique per transaction.",
)


def render_card(meta: Mapping[str, Any]) -> str:
    """A human-readable model card from model.json, so the two can never disagree."""
    training = meta["training"]
    metrics = meta["metrics"]
    lines = [
        f"# Model card: {meta['name']}/{meta['version']}",
        "",
        "Fraud score for card transactions: the probability that a transaction is fraudulent, from stateless, "
        "per-customer and per-terminal window features computed by `scorer.features` (identical offline and "
        "online).",
        "",
        "## Model",
        f"- Estimator: {meta['estimator']['type']} {meta['estimator']['hyperparameters']}",
        f"- Input: `{meta['input']['name']}` float32 [n, {len(meta['feature_names'])}]; output: {meta['output']}",
        f"- Threshold: {meta['threshold']:.6f} ({meta['threshold_policy']['description']})",
        f"- Created: {meta['created']} with code {training['code_version']}",
        "",
        "## Training data",
        f"- Source `{training['data_dir']}`, sha256 `{training['data_sha256']}`",
        f"- {training['n_transactions']:,} transactions, {training['n_labels']:,} labels",
        *(f"- {name} period: {span[0]} .. {span[1]}" for name, span in training["periods"].items()),
        f"- ONNX vs the trained model, max |delta score|: {training['onnx_parity_max_abs_delta']:.2e}",
        "",
        "## Metrics",
        "| split | ROC AUC | Average Precision | Card Precision@100 | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for split, m in metrics.items():
        lines.append(
            f"| {split} | {m['roc_auc']:.4f} | {m['average_precision']:.4f} | {m['card_precision_at_100']:.4f} "
            f"| {m['precision']:.4f} | {m['recall']:.4f} |"
        )
    lines += ["", "## Known faults", *(f"- {f}" for f in meta["known_faults"])]
    lines += ["", "## Limits", *(f"- {f}" for f in meta["limits"])]
    lines += _retraining(meta.get("retrain"))
    lines += ["", "## Features", *(f"- `{n}`" for n in meta["feature_names"]), ""]
    return "\n".join(lines)


def _retraining(retrain: Mapping[str, Any] | None) -> list[str]:
    """The card's section on a version `scorer retrain` made: its window, labels, alarms and fate."""
    if not retrain:
        return []
    labels = ", ".join(f"{n:,} {source}" for source, n in sorted(retrain["labels_by_source"].items()))
    lines = [
        "",
        "## Retraining",
        f"- Trained by `scorer retrain` (run {retrain['run_id']}) against champion {retrain['champion']}",
        f"- Window: transactions {retrain['window'][0]} .. {retrain['window'][1]}; labels reported before "
        f"{retrain['cutoff']} (the cut-off), none later",
        f"- Labels by source: {labels or 'none'}",
    ]
    alarms = retrain.get("alarms") or []
    if alarms:
        lines.append("- **Trained across alarms** (the window's inputs differ from the champion's training):")
        lines += [f"  - {a}" for a in alarms]
    else:
        lines.append("- No input-check or drift alarm in the window")
    lines += [f"- Gate: {c}" for c in retrain.get("gate", [])]
    decision = retrain.get("decision")
    lines.append(f"- Decision: {decision}" if decision else "- Decision: pending (in shadow)")
    return lines
