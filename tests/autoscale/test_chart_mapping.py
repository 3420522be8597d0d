"""Chart values -> rendered ScaledObject (Helm engine) -> the model's view of it."""

from __future__ import annotations

import pytest

from tests.autoscale.chart import autoscaling_values, render
from tests.autoscale.model import Autoscaler, Policy, ScaledObjectSpec, ScalingRules
from tests.chart.chartlib import VALUE_SETS, find, render_set, render_values

AMQP = "amqp://cpw:pw@rabbitmq.messaging.svc:5672/"
MGMT = "http://cpw:pw@rabbitmq.messaging.svc:15672/"


def test_chart_defaults_map_to_keda_and_hpa():
    r = render(autoscaling_values(AMQP, MGMT, {}))
    s = r.spec
    t = s.trigger
    assert (t.protocol, t.mode, t.queue_name) == ("http", "QueueLength", "provider.jobs")
    assert not t.exclude_unacknowledged, "the chart must count unacknowledged messages (jobs being run)"
    assert t.value == 4 == int(r.worker_env["CPW_MAX_CONCURRENT_JOBS"])  # jobsPerReplica defaults to the prefetch
    assert t.activation_value == 0 and t.metric_type == "AverageValue"
    assert (s.polling_interval, s.cooldown_period, s.min_replicas, s.max_replicas) == (15, 300, 1, 10)
    assert s.scale_up == ScalingRules(0, "Max", (Policy("Percent", 100, 30), Policy("Pods", 4, 30)))
    assert s.scale_down == ScalingRules(300, "Min", (Policy("Pods", 1, 60), Policy("Percent", 10, 60)))
    assert s.fallback is not None and (s.fallback.failure_threshold, s.fallback.replicas) == (3, 10)
    assert r.management_url == MGMT and r.amqp_url == AMQP
    assert t.queue_url(r.management_url) == "http://rabbitmq.messaging.svc:15672/api/queues/%2F/provider.jobs"
    assert r.worker_env["CPW_DRAIN_TIMEOUT"] == "60" and r.termination_grace_seconds == 75


def test_values_reach_the_model():
    r = render(
        autoscaling_values(
            AMQP,
            MGMT,
            {
                "minReplicas": 0,
                "maxReplicas": 4,
                "jobsPerReplica": 8,
                "activationValue": 2,
                "pollingInterval": 1,
                "cooldownPeriod": 10,
                "fallback": {"enabled": False},
                "behavior": {
                    "scaleDown": {
                        "stabilizationWindowSeconds": 5,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 2}],
                    }
                },
            },
            maxConcurrentJobs=2,
            drainTimeout=3,
        )
    )
    s = r.spec
    assert (s.trigger.value, s.trigger.activation_value) == (8, 2)
    assert (s.polling_interval, s.cooldown_period, s.min_replicas, s.max_replicas, s.hpa_min_replicas) == (
        1,
        10,
        0,
        4,
        1,
    )
    assert s.fallback is None
    assert s.scale_down.stabilization_window == 5 and s.scale_down.policies == (Policy("Pods", 1, 2),)
    assert r.worker_env["CPW_MAX_CONCURRENT_JOBS"] == "2" and r.worker_env["CPW_DRAIN_TIMEOUT"] == "3"


def test_a_custom_jobs_queue_is_the_one_keda_watches():
    values = autoscaling_values(AMQP, MGMT, {})
    values["global"]["broker"] = {"jobsQueue": "team-a.jobs"}
    r = render(values)
    assert r.spec.trigger.queue_name == "team-a.jobs" == r.worker_env["CPW_JOBS_QUEUE"]


def test_cpu_trigger_is_named_as_not_modelled():
    r = render(autoscaling_values(AMQP, MGMT, {"targetCPUUtilizationPercentage": 70}))
    assert r.spec.other_triggers == ("rabbitmq (useRegex)", "cpu") and r.spec.fallback is None


def test_cluster_mode_sets_host_and_vhost_name_in_the_trigger():
    docs = render_values(VALUE_SETS["rabbitmq-cluster"] | {"workers": {"autoscaling": {"enabled": True}}})
    scaled = find(docs, "ScaledObject")
    assert scaled, "cluster mode renders a ScaledObject"
    t = ScaledObjectSpec.from_manifest(scaled[0]).trigger
    meta = scaled[0]["spec"]["triggers"][0]["metadata"]
    assert t.queue_url(meta["host"]).endswith("/api/queues/%2F/provider.jobs")


@pytest.mark.parametrize("name", ["keda-on", "production", "kitchen-sink", "high-throughput-keda"])
def test_every_shipped_keda_value_set_is_understood_by_the_model(name):
    for doc in find(render_set(name), "ScaledObject"):
        auto = Autoscaler(ScaledObjectSpec.from_manifest(doc))
        # a burst from zero: KEDA activates, the HPA takes over within its limits
        assert auto.keda_poll(0, 0, 1000).desired == max(auto.spec.min_replicas, 1)
        assert auto.spec.hpa_min_replicas <= auto.hpa_sync(15, 1, 1000).desired <= auto.spec.max_replicas


def test_keda_watches_the_vhost_the_workers_consume_from():
    # The trigger names the vhost itself: KEDA would otherwise read it from the management URL's path.
    r = render(autoscaling_values("amqp://cpw:pw@rabbitmq:5672/team-a", "http://cpw:pw@rabbitmq:15672/", {}))
    assert r.spec.trigger.queue_url(r.management_url) == "http://rabbitmq:15672/api/queues/team-a/provider.jobs"
