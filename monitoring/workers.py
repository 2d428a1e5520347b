"""One ``/metrics`` for an instance that serves from several worker processes.

Each worker exports its own metrics on a private loopback port; the instance's endpoint parses
their expositions (prometheus-client's own parser) and merges them, so Prometheus, the
ServiceMonitor and the alert rules see one instance exactly as with one process:

- counters and histograms are summed over the workers, and a worker that was replaced keeps
  counting through :class:`RetiredCounters` (its last values), so no sum ever goes backwards;
- ``*_created`` is the earliest worker's;
- the collapse detector's gauges come from the worst worker as a whole (any collapsed first,
  then the lowest responsiveness), and each feature's drift gauges from the worker worst on
  that feature (drifted first, then the most inputs out of range, then the largest mean shift):
  collapse and drift are decided per worker and reported as the worst worker;
- the remaining gauges are summed (queue depth, tracked series) or united (info series).

Nothing here imports TensorFlow: the supervisor process that serves the merged endpoint stays
light.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

# The collapse detector's gauges, reported together from one worker (the worst).
COLLAPSE_GAUGES = frozenset(
    {
        "forecast_prediction_variance_ratio",
        "forecast_prediction_responsiveness_ratio",
        "forecast_input_activity_ratio",
        "forecast_collapse_threshold_ratio",
        "forecast_output_collapsed",
        "forecast_prediction_target_mean",
        "forecast_prediction_target_stddev",
    }
)
# The drift detector's per-feature gauges, reported per feature from the worst worker on it.
DRIFT_GAUGES = frozenset(
    {
        "forecast_input_mean_zscore",
        "forecast_input_std_ratio",
        "forecast_input_psi",
        "forecast_input_out_of_range_ratio",
        "forecast_input_drifted",
    }
)
SUMMED_GAUGES = frozenset({"forecast_queue_depth", "forecast_realized_tracked_series"})
# Series whose presence is the information: united over workers (the largest value per label
# set). Two workers serving different versions for a moment show both versions.
UNITED_GAUGES = frozenset(
    {
        "forecast_model_info",
        "forecast_candidate_info",
        "forecast_interval_nominal_coverage_ratio",
        "forecast_workers",
    }
)
KNOWN_GAUGES = COLLAPSE_GAUGES | DRIFT_GAUGES | SUMMED_GAUGES | UNITED_GAUGES
SUMMED_TYPES = ("counter", "histogram", "summary")

Families = list[Metric]
_Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def parse(exposition: str) -> Families:
    """A worker's ``/metrics`` text as metric families."""
    return list(text_string_to_metric_families(exposition))


def _key(sample: Sample) -> _Key:
    return sample.name, tuple(sorted(sample.labels.items()))


def _value(families: Families, name: str, labels: dict[str, str] | None = None) -> float:
    for family in families:
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return float(sample.value)
    return math.nan


def _low_first(value: float) -> float:
    """Sort key that puts NaN (no data yet) after every number."""
    return math.inf if math.isnan(value) else value


def _collapse_rank(families: Families) -> tuple[float, float]:
    collapsed = _value(families, "forecast_output_collapsed")
    responsiveness = _value(families, "forecast_prediction_responsiveness_ratio")
    return (-(collapsed if not math.isnan(collapsed) else 0.0), _low_first(responsiveness))


def _drift_rank(families: Families, feature: str) -> tuple[float, float, float]:
    labels = {"feature": feature}
    drifted = _value(families, "forecast_input_drifted", labels)
    out_of_range = _value(families, "forecast_input_out_of_range_ratio", labels)
    shift = abs(_value(families, "forecast_input_mean_zscore", labels))

    def high_first(value: float) -> float:
        return -(0.0 if math.isnan(value) else value)

    return high_first(drifted), high_first(out_of_range), high_first(shift)


@dataclass
class RetiredCounters:
    """The last counter and histogram values of workers that were replaced: added to the
    live workers' sums so the instance's counters stay monotonic across a worker restart."""

    # family name -> (the family, as last seen; sample key -> (labels, carried value))
    families: dict[str, tuple[Metric, dict[_Key, tuple[dict[str, str], float]]]] = field(
        default_factory=dict
    )

    def retire(self, families: Families) -> None:
        for family in families:
            if family.type not in SUMMED_TYPES:
                continue
            _, values = self.families.setdefault(family.name, (family, {}))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = _key(sample)
                carried = values.get(key, (sample.labels, 0.0))[1]
                values[key] = (sample.labels, carried + float(sample.value))

    def values(self, family: str) -> dict[_Key, tuple[dict[str, str], float]]:
        return self.families[family][1] if family in self.families else {}


def merge(workers: Sequence[Families], retired: RetiredCounters | None = None) -> Families:
    """The instance's families from each live worker's (in the workers' family order)."""
    order: list[str] = []
    by_name: dict[str, list[tuple[int, Metric]]] = {}
    for index, families in enumerate(workers):
        for family in families:
            if family.name not in by_name:
                order.append(family.name)
                by_name[family.name] = []
            by_name[family.name].append((index, family))
    collapse_worst = _worst_collapse(workers)
    drift_worst = _worst_drift(workers)
    merged: Families = []
    for name in order:
        parts = by_name[name]
        first = parts[0][1]
        out = Metric(name, first.documentation, first.type, first.unit)
        if first.type in SUMMED_TYPES:
            _add_summed(out, [family for _, family in parts], retired)
        elif name.endswith("_created"):
            _add_combined(out, [family for _, family in parts], min)
        elif name in COLLAPSE_GAUGES:
            chosen = [family for index, family in parts if index == collapse_worst]
            out.samples = list(chosen[0].samples if chosen else first.samples)
        elif name in DRIFT_GAUGES:
            out.samples = _worst_per_feature(parts, drift_worst)
        elif name in SUMMED_GAUGES:
            _add_combined(out, [family for _, family in parts], sum)
        else:  # united, and any gauge not classified above: the largest value per label set
            _add_combined(out, [family for _, family in parts], max)
        merged.append(out)
    if retired is not None:  # counters only workers that were replaced had
        for name, (family, _) in retired.families.items():
            if name not in by_name:
                out = Metric(name, family.documentation, family.type, family.unit)
                _add_summed(out, [], retired)
                merged.append(out)
    return merged


def _worst_collapse(workers: Sequence[Families]) -> int:
    ranked = [
        (_collapse_rank(families), index)
        for index, families in enumerate(workers)
        if any(f.name == "forecast_output_collapsed" for f in families)
    ]
    return min(ranked)[1] if ranked else -1


def _worst_drift(workers: Sequence[Families]) -> dict[str, int]:
    """Per feature, the index of the worker worst on it (the first one on a tie): every drift
    gauge of that feature comes from that worker."""
    worst: dict[str, tuple[tuple[float, float, float], int]] = {}
    for index, families in enumerate(workers):
        features = {
            sample.labels.get("feature", "")
            for family in families
            if family.name in DRIFT_GAUGES
            for sample in family.samples
        }
        for feature in features:
            ranked = (_drift_rank(families, feature), index)
            if feature not in worst or ranked < worst[feature]:
                worst[feature] = ranked
    return {feature: index for feature, (_, index) in worst.items()}


def _worst_per_feature(parts: Sequence[tuple[int, Metric]], worst: dict[str, int]) -> list[Sample]:
    """One drift gauge family's samples, each feature's from its worst worker."""
    return [
        sample
        for index, family in parts
        for sample in family.samples
        if worst.get(sample.labels.get("feature", "")) == index
    ]


def _add_summed(out: Metric, families: Iterable[Metric], retired: RetiredCounters | None) -> None:
    totals: dict[_Key, float] = {}
    labels: dict[_Key, dict[str, str]] = {}
    for family in families:
        for sample in family.samples:
            key = _key(sample)
            if sample.name.endswith("_created"):
                totals[key] = min(totals.get(key, math.inf), float(sample.value))
            else:
                totals[key] = totals.get(key, 0.0) + float(sample.value)
            labels.setdefault(key, sample.labels)
    if retired is not None:
        for key, (sample_labels, carried) in retired.values(out.name).items():
            totals[key] = totals.get(key, 0.0) + carried
            labels.setdefault(key, sample_labels)
    for key, value in totals.items():
        out.add_sample(key[0], labels[key], value)


def _add_combined(
    out: Metric, families: Iterable[Metric], combine: Callable[[list[float]], float]
) -> None:
    values: dict[_Key, list[float]] = {}
    labels: dict[_Key, dict[str, str]] = {}
    for family in families:
        for sample in family.samples:
            key = _key(sample)
            values.setdefault(key, []).append(float(sample.value))
            labels.setdefault(key, sample.labels)
    for key, group in values.items():
        out.add_sample(key[0], labels[key], combine(group))
