"""The model against the formula cases the KEDA and Kubernetes docs give (pure, no broker, no chart)."""

from __future__ import annotations

import pytest

from tests.autoscale.model import (
    HPA,
    Autoscaler,
    Fallback,
    Keda,
    Policy,
    RabbitMQTrigger,
    ScaledObjectSpec,
    ScalingRules,
    default_rules,
    replicas_for_metric,
)

QUEUE = {"messages": 30, "messages_ready": 22, "messages_unacknowledged": 8}


def trigger(**kw) -> RabbitMQTrigger:
    return RabbitMQTrigger(**{"queue_name": "provider.jobs", "value": 10.0, **kw})


def spec(**kw) -> ScaledObjectSpec:
    return ScaledObjectSpec(**{"trigger": trigger(), **kw})


# -- KEDA's rabbitmq scaler


def test_metric_counts_ready_and_unacknowledged_by_default():
    assert trigger().metric(QUEUE) == 30


def test_exclude_unacknowledged_counts_ready_only():
    assert trigger(exclude_unacknowledged=True).metric(QUEUE) == 22


def test_from_trigger_reads_the_metadata_strings():
    t = RabbitMQTrigger.from_trigger(
        {
            "type": "rabbitmq",
            "name": "q",
            "metadata": {
                "protocol": "http",
                "mode": "QueueLength",
                "value": "4",
                "activationValue": "2.5",
                "queueName": "provider.jobs",
                "excludeUnacknowledged": "true",
            },
        }
    )
    assert (t.value, t.activation_value, t.exclude_unacknowledged, t.metric_type) == (
        4.0,
        2.5,
        True,
        "AverageValue",
    )


def test_a_queue_not_sampled_yet_reads_zero():
    assert trigger().metric({"name": "provider.jobs"}) == 0


@pytest.mark.parametrize(
    ("activation", "metric", "active"),
    [
        (0, 0, False),
        (0, 1, True),  # KEDA: activationValue 0 activates at 1 or more
        (10.5, 10, False),
        (10.5, 10.5, False),
        (10.5, 11, True),  # strictly greater
    ],
)
def test_activation_is_strictly_greater_than_the_activation_value(activation, metric, active):
    assert trigger(activation_value=activation).is_active(metric) is active


@pytest.mark.parametrize(
    ("host", "vhost_name", "url"),
    [
        ("http://u:p@rabbit:15672/", None, "http://rabbit:15672/api/queues/%2F/provider.jobs"),
        ("http://u:p@rabbit:15672/cpw", None, "http://rabbit:15672/api/queues/cpw/provider.jobs"),
        ("http://u:p@rabbit:15672/mgmt/cpw", None, "http://rabbit:15672/mgmt/api/queues/cpw/provider.jobs"),
        ("http://u:p@rabbit:15672/cpw", "other", "http://rabbit:15672/api/queues/other/provider.jobs"),
        ("http://rabbit:15672/", "/", "http://rabbit:15672/api/queues/%2F/provider.jobs"),
    ],
)
def test_queue_url_takes_the_vhost_from_the_host_path_or_vhost_name(host, vhost_name, url):
    assert trigger(vhost_name=vhost_name).queue_url(host) == url


# -- the HPA's formula


def test_keda_doc_example_one_pod_per_ten_messages_thirty_messages_three_pods():
    assert replicas_for_metric(30, 10, current=1) == 3


@pytest.mark.parametrize(
    ("metric", "target", "current", "desired"),
    [
        (0.2, 0.1, 2, 4),  # Kubernetes doc: 200m against 100m doubles
        (0.05, 0.1, 4, 2),  # 50m against 100m halves
        (0.105, 0.1, 4, 4),  # within the 0.1 tolerance: no change
    ],
)
def test_value_target_scales_current_replicas_by_the_ratio(metric, target, current, desired):
    assert replicas_for_metric(metric, target, current, metric_type="Value") == desired


@pytest.mark.parametrize(
    ("metric", "current", "desired"),
    [
        (16, 4, 4),  # exactly on target
        (17, 4, 4),  # 17/16 = 1.0625, within tolerance: ceil(17/4) = 5 is not taken
        (17.6, 4, 4),  # 1.1 exactly: the tolerance is inclusive
        (18, 4, 5),  # 1.125: outside, ceil(18/4)
        (14.5, 4, 4),  # 0.906: within
        (14, 4, 4),  # 0.875: outside, ceil(14/4) = 4 anyway
        (9, 4, 3),
        (0, 4, 0),  # the raw recommendation may be 0; min clamps it later
        (2000, 1, 500),
    ],
)
def test_average_value_target_is_ceil_metric_over_value_outside_the_tolerance(metric, current, desired):
    assert replicas_for_metric(metric, 4, current) == desired


def test_configured_tolerance_per_direction():
    assert replicas_for_metric(17, 4, 4, tolerance=0.1, up_tolerance=0.0) == 5
    assert replicas_for_metric(14.5, 4, 4, tolerance=0.0, up_tolerance=0.1) == 4  # ceil(3.625) = 4 anyway
    assert replicas_for_metric(11.5, 4, 4, tolerance=0.3) == 4
    assert replicas_for_metric(11.5, 4, 4, tolerance=0.1) == 3


def test_zero_replicas_has_no_ratio():
    with pytest.raises(ValueError):
        replicas_for_metric(10, 4, 0)


# -- behavior: defaults and merging


def test_kubernetes_default_behavior():
    up, down = default_rules("up"), default_rules("down")
    assert (up.stabilization_window, up.select_policy) == (0, "Max")
    assert set(up.policies) == {Policy("Percent", 100, 15), Policy("Pods", 4, 15)}
    assert (down.stabilization_window, down.select_policy, down.policies) == (
        300,
        "Max",
        (Policy("Percent", 100, 15),),
    )


def test_partial_behavior_is_merged_with_the_defaults():
    down = ScalingRules.from_spec({"stabilizationWindowSeconds": 60}, "down")
    assert down.stabilization_window == 60 and down.policies == (Policy("Percent", 100, 15),)
    up = ScalingRules.from_spec({"policies": [{"type": "Pods", "value": 1, "periodSeconds": 5}]}, "up")
    assert up.stabilization_window == 0 and up.select_policy == "Max" and up.policies == (Policy("Pods", 1, 5),)


def test_absent_behavior_uses_the_defaults_in_the_scaled_object():
    s = ScaledObjectSpec.from_manifest(
        {
            "kind": "ScaledObject",
            "spec": {
                "scaleTargetRef": {"name": "w"},
                "triggers": [{"type": "rabbitmq", "metadata": {"queueName": "q", "value": "5", "protocol": "http"}}],
            },
        }
    )
    assert (s.polling_interval, s.cooldown_period, s.min_replicas, s.max_replicas) == (30, 300, 0, 100)
    assert s.scale_up == default_rules("up") and s.scale_down == default_rules("down")
    assert s.hpa_min_replicas == 1 and s.fallback is None


# -- behavior: policies (rate limits)


def test_default_scale_up_adds_four_pods_or_doubles_whichever_is_more():
    hpa = HPA(1, 100)
    assert hpa.reconcile(0, 1, 50) == 5  # 1 + 4 beats 1 * 2
    assert hpa.reconcile(15.5, 5, 50) == 10  # new period: 5 * 2 beats 5 + 4
    assert hpa.reconcile(31, 10, 50) == 20


def test_scale_up_within_one_period_counts_what_the_period_already_added():
    hpa = HPA(1, 100)
    assert hpa.reconcile(0, 1, 50) == 5
    assert hpa.reconcile(5, 5, 50) == 5  # the period started at 1: at most 5 until it ends
    assert hpa.reconcile(14, 5, 50) == 5
    assert hpa.reconcile(15.1, 5, 50) == 10


def test_kubernetes_doc_scale_down_example_percent_wins_above_forty_pods():
    down = ScalingRules(0, "Max", (Policy("Pods", 4, 60), Policy("Percent", 10, 60)))
    hpa = HPA(1, 100, scale_down=down)
    steps, current, now = [], 80, 0.0
    while current > 10:
        current = hpa.reconcile(now, current, 10)
        steps.append(current)
        now += 61
    # 80 -> 72 (8 = 10 %), 72 -> 64 (7.2 rounded up to 8 removed), ... 4 at a time from 40 down
    assert steps[:3] == [72, 64, 57]
    assert steps[5:] == [40, 36, 32, 28, 24, 20, 16, 12, 10]  # 4 pods a minute once 10 % is less than that
    assert all(a - b >= 4 for a, b in zip([80, *steps[:-2]], steps[:-1], strict=True))


def test_select_policy_min_takes_the_smallest_change():
    down = ScalingRules(0, "Min", (Policy("Percent", 10, 60), Policy("Pods", 5, 60)))
    hpa = HPA(1, 200, scale_down=down)
    assert hpa.reconcile(0, 100, 10) == 95  # 5 pods < 10 %
    hpa = HPA(1, 200, scale_down=down)
    assert hpa.reconcile(0, 30, 10) == 27  # 10 % of 30 = 3 < 5 pods


def test_chart_default_scale_down_is_one_pod_per_minute():
    down = ScalingRules(0, "Min", (Policy("Pods", 1, 60), Policy("Percent", 10, 60)))
    hpa = HPA(1, 20, scale_down=down)
    assert hpa.reconcile(0, 10, 1) == 9
    assert hpa.reconcile(30, 9, 1) == 9  # one pod already removed in this minute
    assert hpa.reconcile(60.5, 9, 1) == 8


def test_disabled_direction_never_moves():
    hpa = HPA(1, 10, scale_down=ScalingRules(0, "Disabled", (Policy("Pods", 1, 15),)))
    assert hpa.reconcile(0, 6, 1) == 6
    hpa = HPA(1, 10, scale_up=ScalingRules(0, "Disabled", (Policy("Pods", 1, 15),)))
    assert hpa.reconcile(0, 2, 9) == 2


def test_min_and_max_clamp():
    hpa = HPA(2, 4, scale_down=ScalingRules(0, "Max", (Policy("Percent", 100, 15),)))
    assert hpa.reconcile(0, 3, 500) == 4
    assert hpa.reconcile(100, 4, 0) == 2
    assert HPA(2, 4).reconcile(0, 7, 7) == 4  # above max: back to max, whatever the metric
    assert HPA(2, 4).reconcile(0, 1, None) == 2  # below min: up to min even without a metric


def test_zero_replicas_disables_the_hpa_and_a_failed_metric_keeps_the_count():
    assert HPA(1, 4).reconcile(0, 0, 100) == 0
    assert HPA(1, 4).reconcile(0, 3, None) == 3


# -- behavior: stabilization windows


def test_scale_down_window_keeps_the_highest_recommendation_of_the_window():
    hpa = HPA(1, 20, scale_down=ScalingRules(300, "Max", (Policy("Percent", 100, 15),)))
    assert hpa.reconcile(0, 10, 10) == 10
    assert hpa.reconcile(60, 10, 6) == 10
    assert hpa.reconcile(120, 10, 3) == 10
    assert hpa.reconcile(301, 10, 3) == 6  # the 10 of t=0 left the window; 6 (t=60) is the highest now
    assert hpa.reconcile(361, 6, 3) == 3


def test_scale_down_window_starts_with_the_count_the_hpa_found():
    hpa = HPA(1, 20, scale_down=ScalingRules(300, "Max", (Policy("Percent", 100, 15),)))
    assert hpa.reconcile(0, 8, 2) == 8
    assert hpa.reconcile(299, 8, 2) == 8
    assert hpa.reconcile(300.5, 8, 2) == 2


def test_scale_up_window_keeps_the_lowest_recommendation_of_the_window():
    up = ScalingRules(60, "Max", (Policy("Percent", 1000, 15),))
    hpa = HPA(1, 20, scale_up=up, scale_down=ScalingRules(0, "Max", (Policy("Percent", 100, 15),)))
    assert hpa.reconcile(0, 2, 2) == 2
    assert hpa.reconcile(10, 2, 8) == 2  # 2 is still in the up window
    assert hpa.reconcile(30, 2, 6) == 2
    assert hpa.reconcile(61, 2, 8) == 6  # lowest of (6 at 30, 8 at 61) within 60 s


def test_spike_inside_the_down_window_does_not_flap():
    hpa = HPA(1, 10, scale_down=ScalingRules(30, "Max", (Policy("Pods", 1, 10),)))
    seen = [hpa.reconcile(t, c, d) for t, c, d in [(0, 2, 2), (5, 2, 1), (10, 2, 3), (15, 3, 1), (20, 3, 2)]]
    assert seen == [2, 2, 3, 3, 3]


# -- KEDA's executor


def test_scale_from_zero_when_active_and_to_zero_only_after_the_cooldown():
    keda = Keda(spec(cooldown_period=10))
    assert keda.poll(0, 0, 0) is None  # inactive at zero: nothing
    assert keda.poll(1, 0, 5) == 1  # active: 0 -> 1
    assert keda.poll(2, 3, 5) is None  # active at > 0: the HPA's job
    assert keda.poll(3, 3, 0) is None  # inactive, cooling down since t=2
    assert keda.poll(12, 3, 0) is None  # 2 + 10 is not before 12
    assert keda.poll(12.5, 3, 0) == 0


def test_scale_from_zero_goes_to_min_when_min_is_above_one_and_activation_is_ignored():
    keda = Keda(spec(min_replicas=2, cooldown_period=0))
    assert keda.is_active(0) is True
    assert keda.poll(0, 0, 0) == 2
    assert keda.poll(100, 3, 0) is None  # never to zero with min >= 1


def test_activation_above_the_scaling_value_wins_keda_doc_example():
    # threshold 10, activation 50: 40 messages make the HPA want 4 pods, but the trigger is not active
    keda = Keda(spec(trigger=trigger(value=10, activation_value=50), cooldown_period=0))
    assert replicas_for_metric(40, 10, 1) == 4
    assert keda.poll(0, 0, 40) is None
    assert keda.poll(1, 4, 40) == 0


def test_fallback_after_more_than_failure_threshold_errors():
    s = spec(fallback=Fallback(failure_threshold=3, replicas=6), max_replicas=10)
    auto = Autoscaler(s, hpa_sync_period=1)
    for i in range(3):
        auto.keda_poll(i, 2, None)
        assert not auto.keda.in_fallback
    assert auto.keda_poll(3, 2, None).desired == 6  # the 4th failure passes the threshold
    assert auto.keda.hpa_metric(None) == 60  # value * fallback replicas, so the HPA lands on 6
    assert auto.hpa_sync(4, 6, None).desired == 6
    auto.keda_poll(5, 6, 3)
    assert not auto.keda.in_fallback


def test_errors_never_scale_to_zero():
    keda = Keda(spec(cooldown_period=0))
    keda.poll(0, 0, 5)
    assert keda.poll(100, 1, None) is None


# -- KEDA and the HPA together: the burst, step by step


def test_burst_with_the_chart_default_behavior():
    s = spec(
        trigger=trigger(value=4),
        min_replicas=0,
        max_replicas=4,
        polling_interval=15,
        cooldown_period=300,
        scale_up=ScalingRules(0, "Max", (Policy("Percent", 100, 30), Policy("Pods", 4, 30))),
        scale_down=ScalingRules(300, "Min", (Policy("Pods", 1, 60), Policy("Percent", 10, 60))),
    )
    auto = Autoscaler(s, hpa_sync_period=15)
    assert auto.hpa_sync(0, 0, 2000).desired == 0  # the HPA is idle at zero
    assert auto.keda_poll(0, 0, 2000).desired == 1
    assert auto.hpa_sync(15, 1, 2000).desired == 4  # 1 + 4 = 5 allowed, max 4
    assert auto.hpa_sync(30, 4, 1200).desired == 4
    assert auto.keda_poll(15, 4, 1200).desired == 4  # active: the HPA's job; last active t=15
    assert auto.keda_poll(30, 4, 0).desired == 4  # drained: cooling down
    assert auto.hpa_sync(45, 4, 0).desired == 4  # the HPA's down window (300 s) holds 4
    assert auto.keda_poll(315, 4, 0).desired == 4  # 15 + 300 is not before 315
    assert auto.keda_poll(330, 4, 0).desired == 0  # KEDA, not the HPA, takes it to zero
