"""A model of what KEDA and the Kubernetes HPA do with the ScaledObject the chart renders.

Plain code, no cluster: feed it the queue as the RabbitMQ management API reports it and the current replica
count, and it answers the replica count KEDA or the HPA would set. The drill (drill.py) runs it on a real
broker against real worker processes; test_model.py checks it against the formula cases of the KEDA and
Kubernetes docs.

What is modelled, and from where:

- KEDA's rabbitmq scaler, `protocol: http`, `mode: QueueLength`: GET /api/queues/{vhost}/{queue}; the metric
  is `messages` (ready + unacknowledged), or `messages_ready` with `excludeUnacknowledged: "true"`. The
  trigger is active when the metric is strictly greater than `activationValue` (default 0). The vhost is
  `vhostName`, else the last path segment of the host URL ("/" when it has none).
- KEDA's scale executor, every `pollingInterval`: 0 -> max(minReplicaCount, 1) when active; back to 0 (only
  with minReplicaCount 0) when inactive and `cooldownPeriod` has passed since the last active check; up to min
  when below it; fallback replicas after more than `fallback.failureThreshold` failed checks. With
  minReplicaCount >= 1 the activation value is ignored (KEDA: "the scaler is always active").
- The HPA KEDA creates (min = max(minReplicaCount, 1), max = maxReplicaCount), every sync period
  (kube-controller-manager `--horizontal-pod-autoscaler-sync-period`, 15 s by default; a parameter here): an
  external metric with an AverageValue target gives desired = ceil(metric / value) unless metric / (value *
  current) is within the tolerance (0.1) of 1; a Value target gives ceil(current * metric / value) with the
  same tolerance. Then the behavior: stabilization (the lowest recommendation of the scale-up window, the
  highest of the scale-down window, current replicas between them), rate limits from the policies (Pods /
  Percent per periodSeconds, measured from the replica count at the start of the period, selectPolicy Max /
  Min / Disabled), and the min / max clamp. Missing behavior fields take the Kubernetes defaults. The HPA does
  nothing while the target has 0 replicas.

Not modelled: the cpu trigger (no CPU offline; `ScaledObjectSpec.other_triggers` names what was ignored),
a useRegex trigger (the chart's activation-only one on the retry delay queues, named there as well; its target
never asks for more than one replica, and tests/pods/keda.py models its activation), MessageRate mode, scalingModifiers, idleReplicaCount, pod readiness in the HPA's pod metrics
(external metrics do not use it)."""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Kubernetes defaults (kube-controller-manager flags and the autoscaling/v2 API defaults).
DEFAULT_TOLERANCE = 0.1
DEFAULT_HPA_SYNC_PERIOD = 15.0
DEFAULT_DOWNSCALE_STABILIZATION = 300.0

# KEDA ScaledObject defaults.
DEFAULT_POLLING_INTERVAL = 30.0
DEFAULT_COOLDOWN_PERIOD = 300.0
DEFAULT_MIN_REPLICAS = 0
DEFAULT_MAX_REPLICAS = 100


@dataclass(frozen=True)
class Policy:
    """One HPA scaling policy: `type` Pods or Percent, `value`, `period` seconds."""

    type: str
    value: int
    period: float

    def __post_init__(self) -> None:
        if self.type not in ("Pods", "Percent"):
            raise ValueError(f"policy type must be Pods or Percent, not {self.type!r}")
        if self.value <= 0 or self.period <= 0:
            raise ValueError("policy value and periodSeconds must be > 0")


@dataclass(frozen=True)
class ScalingRules:
    """`behavior.scaleUp` or `behavior.scaleDown` with the defaults filled in."""

    stabilization_window: float
    select_policy: str
    policies: tuple[Policy, ...]
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def longest_period(self) -> float:
        return max((p.period for p in self.policies), default=0.0)

    @classmethod
    def from_spec(
        cls,
        spec: Mapping[str, Any] | None,
        direction: str,
        *,
        downscale_stabilization: float = DEFAULT_DOWNSCALE_STABILIZATION,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> ScalingRules:
        """Merge a rendered `scaleUp` / `scaleDown` with the Kubernetes defaults, field by field."""
        default = default_rules(direction, downscale_stabilization=downscale_stabilization, tolerance=tolerance)
        if not spec:
            return default
        window = spec.get("stabilizationWindowSeconds")
        policies = spec.get("policies")
        return cls(
            stabilization_window=default.stabilization_window if window is None else float(window),
            select_policy=spec.get("selectPolicy") or "Max",
            policies=default.policies
            if policies is None
            else tuple(Policy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in policies),
            tolerance=float(spec["tolerance"]) if spec.get("tolerance") is not None else tolerance,
        )


def default_rules(
    direction: str,
    *,
    downscale_stabilization: float = DEFAULT_DOWNSCALE_STABILIZATION,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ScalingRules:
    """Kubernetes' default behavior: up 100 % or 4 pods per 15 s (the larger), no window; down 100 % per 15 s
    after the downscale stabilization window (300 s)."""
    if direction == "up":
        return ScalingRules(0.0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), tolerance)
    if direction == "down":
        return ScalingRules(downscale_stabilization, "Max", (Policy("Percent", 100, 15),), tolerance)
    raise ValueError(direction)


# -- KEDA's rabbitmq scaler
# ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RabbitMQTrigger:
    """A `type: rabbitmq` trigger as KEDA reads it."""

    queue_name: str
    value: float
    activation_value: float = 0.0
    mode: str = "QueueLength"
    protocol: str = "auto"
    exclude_unacknowledged: bool = False
    vhost_name: str | None = None
    metric_type: str = "AverageValue"
    name: str = ""

    @classmethod
    def from_trigger(cls, trigger: Mapping[str, Any]) -> RabbitMQTrigger:
        meta = trigger.get("metadata") or {}
        mode = meta.get("mode", "QueueLength")
        if mode != "QueueLength":
            raise NotImplementedError(f"the model covers mode QueueLength, not {mode}")
        value = meta.get("value", meta.get("queueLength", "20"))
        return cls(
            queue_name=str(meta["queueName"]),
            value=float(value),
            activation_value=float(meta.get("activationValue", 0) or 0),
            mode=mode,
            protocol=str(meta.get("protocol", "auto")),
            exclude_unacknowledged=str(meta.get("excludeUnacknowledged", "false")).lower() == "true",
            vhost_name=meta.get("vhostName") or meta.get("vHostName"),
            metric_type=str(trigger.get("metricType") or "AverageValue"),
            name=str(trigger.get("name") or ""),
        )

    def metric(self, queue: Mapping[str, Any]) -> float:
        """The value KEDA reports for a /api/queues/{vhost}/{queue} answer. A queue the broker has not sampled
        yet has no counts: that reads as 0, like KEDA's zero-valued JSON decode."""
        key = "messages_ready" if self.exclude_unacknowledged else "messages"
        return float(queue.get(key) or 0)

    def is_active(self, metric: float) -> bool:
        """KEDA's activation: strictly greater than activationValue."""
        return metric > self.activation_value

    def queue_url(self, host: str) -> str:
        """The management API URL KEDA GETs for this trigger, from the `host` (the
        TriggerAuthentication's)."""
        parts = urllib.parse.urlsplit(host)
        segments = parts.path.split("/")
        # KEDA: the last path segment is the vhost, what precedes it a path prefix of the management API.
        vhost = urllib.parse.unquote(segments[-1]) if len(segments) > 1 else ""
        prefix = "/".join(segments[:-1]).rstrip("/")
        if self.vhost_name:
            vhost = self.vhost_name
        vhost = vhost or "/"
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        q = urllib.parse.quote
        return f"{parts.scheme}://{netloc}{prefix}/api/queues/{q(vhost, safe='')}/{q(self.queue_name, safe='')}"


# -- the ScaledObject
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fallback:
    failure_threshold: int
    replicas: int


def _regex(trigger: Mapping[str, Any]) -> bool:
    """A rabbitmq trigger over the queues its regex matches (the chart's activation-only retry trigger)."""
    return str((trigger.get("metadata") or {}).get("useRegex", "false")).lower() == "true"


@dataclass(frozen=True)
class ScaledObjectSpec:
    """What the model needs from a rendered ScaledObject, KEDA's defaults filled in."""

    trigger: RabbitMQTrigger
    polling_interval: float = DEFAULT_POLLING_INTERVAL
    cooldown_period: float = DEFAULT_COOLDOWN_PERIOD
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    fallback: Fallback | None = None
    scale_up: ScalingRules = field(default_factory=lambda: default_rules("up"))
    scale_down: ScalingRules = field(default_factory=lambda: default_rules("down"))
    other_triggers: tuple[str, ...] = ()
    name: str = ""

    @property
    def hpa_min_replicas(self) -> int:
        """KEDA gives its HPA at least 1: the HPA cannot scale to zero, KEDA does."""
        return max(self.min_replicas, 1)

    @classmethod
    def from_manifest(
        cls,
        doc: Mapping[str, Any],
        *,
        downscale_stabilization: float = DEFAULT_DOWNSCALE_STABILIZATION,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> ScaledObjectSpec:
        if doc.get("kind") != "ScaledObject":
            raise ValueError(f"not a ScaledObject: {doc.get('kind')}")
        spec = doc["spec"]
        triggers = spec.get("triggers") or []
        rabbit = [t for t in triggers if t.get("type") == "rabbitmq" and not _regex(t)]
        if len(rabbit) != 1:
            raise ValueError(f"expected one rabbitmq trigger on a queue name, found {len(rabbit)}")
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior") or {}
        fb = spec.get("fallback")
        return cls(
            trigger=RabbitMQTrigger.from_trigger(rabbit[0]),
            polling_interval=float(spec.get("pollingInterval", DEFAULT_POLLING_INTERVAL)),
            cooldown_period=float(spec.get("cooldownPeriod", DEFAULT_COOLDOWN_PERIOD)),
            min_replicas=int(spec.get("minReplicaCount", DEFAULT_MIN_REPLICAS)),
            max_replicas=int(spec.get("maxReplicaCount", DEFAULT_MAX_REPLICAS)),
            fallback=Fallback(int(fb["failureThreshold"]), int(fb["replicas"])) if fb else None,
            scale_up=ScalingRules.from_spec(behavior.get("scaleUp"), "up", tolerance=tolerance),
            scale_down=ScalingRules.from_spec(
                behavior.get("scaleDown"),
                "down",
                downscale_stabilization=downscale_stabilization,
                tolerance=tolerance,
            ),
            other_triggers=tuple(
                f"{t.get('type')} (useRegex)" if _regex(t) else str(t.get("type"))
                for t in triggers
                if t.get("type") != "rabbitmq" or _regex(t)
            ),
            name=str((doc.get("metadata") or {}).get("name", "")),
        )


# -- the HPA
# ---------------------------------------------------------------------------------------------------


def replicas_for_metric(
    metric: float,
    target: float,
    current: int,
    *,
    metric_type: str = "AverageValue",
    tolerance: float = DEFAULT_TOLERANCE,
    up_tolerance: float | None = None,
) -> int:
    """The HPA's raw recommendation for one external metric (before behavior and min/max).

    AverageValue: ratio = metric / (target * current); outside the tolerance, ceil(metric / target).
    Value: ratio = metric / target; outside the tolerance, ceil(ratio * current).
    `tolerance` applies below 1, `up_tolerance` (default: the same) above it.
    Quantities are compared in milli-units, like the API's resource.Quantity.
    """
    if current <= 0:
        raise ValueError("the HPA computes nothing for a target with 0 replicas")
    usage, goal = round(metric * 1000), round(target * 1000)
    if goal <= 0:
        raise ValueError("target must be > 0")
    up_tol = tolerance if up_tolerance is None else up_tolerance
    if metric_type == "AverageValue":
        ratio = usage / (goal * current)
        if _within(ratio, tolerance, up_tol):
            return current
        return math.ceil(usage / goal)
    if metric_type == "Value":
        ratio = usage / goal
        if _within(ratio, tolerance, up_tol):
            return current
        return math.ceil(ratio * current)
    raise ValueError(f"metric type {metric_type!r}")


def _within(ratio: float, down_tol: float, up_tol: float) -> bool:
    return (1.0 - down_tol) <= ratio <= (1.0 + up_tol)


@dataclass
class HPA:
    """The state the HPA controller keeps for one HorizontalPodAutoscaler: its recommendations (for the
    stabilization windows) and the scale events it made (for the policies' periods)."""

    min_replicas: int
    max_replicas: int
    scale_up: ScalingRules = field(default_factory=lambda: default_rules("up"))
    scale_down: ScalingRules = field(default_factory=lambda: default_rules("down"))
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)
    last_reason: str = ""

    @classmethod
    def for_scaled_object(cls, spec: ScaledObjectSpec) -> HPA:
        return cls(spec.hpa_min_replicas, spec.max_replicas, spec.scale_up, spec.scale_down)

    def reconcile(self, now: float, current: int, metric_desired: int | None) -> int:
        """One sync: the replica count the HPA sets. `metric_desired` is the metrics' raw recommendation
        (the largest over metrics), None when no metric could be read (the HPA then keeps its count)."""
        if current == 0 and self.min_replicas > 0:
            self.last_reason = "ScalingDisabled: the target has 0 replicas"
            return 0
        if current > self.max_replicas:
            desired, self.last_reason = self.max_replicas, "TooManyReplicas: current above max"
        elif current < self.min_replicas:
            desired, self.last_reason = self.min_replicas, "TooFewReplicas: current below min"
        elif metric_desired is None:
            self.last_reason = "FailedGetExternalMetric: keeping the current count"
            return current
        else:
            if not self.recommendations:  # the scale-down window starts with the count the HPA found
                self.recommendations.append((now, current))
            stabilized = self.stabilize(now, current, metric_desired)
            desired, self.last_reason = self.limit_rate(now, current, stabilized)
            if stabilized != metric_desired and desired == stabilized:
                self.last_reason = f"stabilized: recommended {metric_desired}"
        if desired != current:
            self._record_event(now, current, desired)
        return desired

    def stabilize(self, now: float, current: int, desired: int) -> int:
        """Scale-up window: the lowest recommendation in it caps a rise; scale-down window: the highest in it
        floors a fall. Then records `desired` (replacing one sample older than both windows)."""
        up_cut = now - self.scale_up.stabilization_window
        down_cut = now - self.scale_down.stabilization_window
        up_rec = down_rec = desired
        stale = None
        for i, (at, rec) in enumerate(self.recommendations):
            if at > up_cut:
                up_rec = min(up_rec, rec)
            if at > down_cut:
                down_rec = max(down_rec, rec)
            if at < up_cut and at < down_cut:
                stale = i
        result = min(max(current, up_rec), down_rec)
        if stale is not None:
            self.recommendations[stale] = (now, desired)
        else:
            self.recommendations.append((now, desired))
        return result

    def limit_rate(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """The policies' limit in the direction of change, then the min / max clamp."""
        lo, hi = self.min_replicas, self.max_replicas
        lo_why, hi_why = "TooFewReplicas", "TooManyReplicas"
        if desired > current:
            limit = max(self.scale_up_limit(now, current), current)  # a scale-up never scales down
            if limit < hi:
                hi, hi_why = limit, "ScaleUpLimit"
        elif desired < current:
            limit = min(self.scale_down_limit(now, current), current)
            if limit > lo:
                lo, lo_why = limit, "ScaleDownLimit"
        if desired < lo:
            return lo, lo_why
        if desired > hi:
            return hi, hi_why
        return desired, "DesiredWithinRange"

    def scale_up_limit(self, now: float, current: int) -> int:
        rules = self.scale_up
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for p in rules.policies:
            start = current - _changed(self.up_events, now, p.period) + _changed(self.down_events, now, p.period)
            if p.type == "Pods":
                proposals.append(start + p.value)
            else:
                proposals.append(math.ceil(start * (1 + p.value / 100)))
        return min(proposals) if rules.select_policy == "Min" else max(proposals)

    def scale_down_limit(self, now: float, current: int) -> int:
        rules = self.scale_down
        if rules.select_policy == "Disabled":
            return current
        proposals = []
        for p in rules.policies:
            start = current + _changed(self.down_events, now, p.period) - _changed(self.up_events, now, p.period)
            if p.type == "Pods":
                proposals.append(start - p.value)
            else:
                proposals.append(int(start * (1 - p.value / 100)))  # the API truncates: fewer pods removed
        # Min selects the policy allowing the smallest change, which for scale-down is the highest count.
        return max(proposals) if rules.select_policy == "Min" else min(proposals)

    def _record_event(self, now: float, before: int, after: int) -> None:
        horizon = max(self.scale_up.longest_period, self.scale_down.longest_period)
        for events in (self.up_events, self.down_events):
            events[:] = [(at, n) for at, n in events if at > now - horizon]
        (self.up_events if after > before else self.down_events).append((now, abs(after - before)))


def _changed(events: list[tuple[float, int]], now: float, period: float) -> int:
    return sum(n for at, n in events if at > now - period)


# -- KEDA
# ------------------------------------------------------------------------------------------------------


@dataclass
class Keda:
    """KEDA's scale executor for one ScaledObject: activation, 0 <-> 1, cooldown, fallback."""

    spec: ScaledObjectSpec
    last_active: float | None = None
    failures: int = 0
    last_reason: str = ""

    @property
    def in_fallback(self) -> bool:
        fb = self.spec.fallback
        return fb is not None and self.failures > fb.failure_threshold

    def observe(self, metric: float | None) -> None:
        """Count a check's failure (None) or success, for the fallback."""
        self.failures = self.failures + 1 if metric is None else 0

    def is_active(self, metric: float | None) -> bool:
        if metric is None:
            return False
        if self.spec.min_replicas >= 1:
            return True
        return self.spec.trigger.is_active(metric)

    def poll(self, now: float, current: int, metric: float | None) -> int | None:
        """One polling interval: the count KEDA sets itself, or None when it leaves the count to the HPA."""
        self.observe(metric)
        active = self.is_active(metric)
        spec = self.spec
        if active:
            self.last_active = now
        if current == 0 and active:
            self.last_reason = "active at zero replicas: scale to max(min, 1)"
            return max(spec.min_replicas, 1)
        if not active and metric is None and self.in_fallback and spec.fallback and spec.fallback.replicas:
            self.last_reason = "fallback"
            return spec.fallback.replicas
        if not active and metric is not None and current > 0 and spec.min_replicas == 0:
            if self.last_active is None or self.last_active + spec.cooldown_period < now:
                self.last_reason = "inactive for the cooldown period: scale to zero"
                return 0
            self.last_reason = "inactive, cooling down"
            return None
        if not active and current < spec.min_replicas:
            self.last_reason = "below minReplicaCount"
            return spec.min_replicas
        self.last_reason = "active" if active else "inactive"
        return None

    def hpa_metric(self, metric: float | None) -> float | None:
        """What KEDA's metrics server answers the HPA: the metric, or target * fallback
        replicas in fallback."""
        if metric is None and self.in_fallback and self.spec.fallback:
            return self.spec.trigger.value * self.spec.fallback.replicas
        return metric


@dataclass
class Decision:
    at: float
    by: str  # "keda" | "hpa"
    metric: float | None
    current: int
    desired: int
    reason: str


@dataclass
class Autoscaler:
    """KEDA and its HPA together, each on its own clock: `poll_due` / `sync_due` say when."""

    spec: ScaledObjectSpec
    hpa_sync_period: float = DEFAULT_HPA_SYNC_PERIOD
    keda: Keda = field(init=False)
    hpa: HPA = field(init=False)
    next_poll: float = 0.0
    next_sync: float = 0.0

    def __post_init__(self) -> None:
        self.keda = Keda(self.spec)
        self.hpa = HPA.for_scaled_object(self.spec)

    def start(self, now: float, *, sync_offset: float = 0.0) -> None:
        self.next_poll = now
        self.next_sync = now + sync_offset

    def keda_poll(self, now: float, current: int, metric: float | None) -> Decision:
        self.next_poll = now + self.spec.polling_interval
        target = self.keda.poll(now, current, metric)
        desired = current if target is None else target
        return Decision(now, "keda", metric, current, desired, self.keda.last_reason)

    def hpa_sync(self, now: float, current: int, metric: float | None) -> Decision:
        self.next_sync = now + self.hpa_sync_period
        value = self.keda.hpa_metric(metric)
        raw = None
        if value is not None and current > 0:
            t = self.spec.trigger
            raw = replicas_for_metric(
                value,
                t.value,
                current,
                metric_type=t.metric_type,
                tolerance=self.spec.scale_down.tolerance,
                up_tolerance=self.spec.scale_up.tolerance,
            )
        desired = self.hpa.reconcile(now, current, raw)
        return Decision(now, "hpa", metric, current, desired, self.hpa.last_reason)
