"""The Ray Serve application: N AdapterReplica replicas behind one OpenAIIngress.

    from adapterkit.integrations.ray import RayServeOptions, build_application
    serve.run(build_application(RayServeOptions(base="smollm2", store="/shared/adapters", replicas=2)))

or from the shell, with Ray's own command (options as key=value):

    serve run adapterkit.integrations.ray:app_builder base=smollm2 store=/shared/adapters replicas=2
"""

from __future__ import annotations

from ray import serve

from adapterkit.integrations.ray.ingress import OpenAIIngress
from adapterkit.integrations.ray.options import RayServeOptions
from adapterkit.integrations.ray.replica import AdapterReplica

# The ingress only parses a body and forwards bytes: it reserves no CPU, so N replicas of one
# CPU each fit on an N-CPU host.
INGRESS_CPUS = 0.0
# A replica told to stop checks this often whether its requests in flight are done (Ray's default: 2 s).
GRACEFUL_WAIT_LOOP_S = 0.5


def build_application(options: RayServeOptions) -> serve.Application:
    options.check()
    replicas = serve.deployment(
        name="AdapterReplica", num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.replica_cpus},
        # A request holds its replica for its whole generation; the engine batches them (max_batch).
        max_ongoing_requests=options.max_batch + options.max_queue,
        health_check_period_s=options.health_check_period_s,
        health_check_timeout_s=max(10.0, 5 * options.health_check_period_s),
        graceful_shutdown_wait_loop_s=GRACEFUL_WAIT_LOOP_S,
    )(AdapterReplica).bind(options)
    ingress = serve.deployment(name="OpenAIIngress", num_replicas=1, ray_actor_options={"num_cpus": INGRESS_CPUS},
                               graceful_shutdown_wait_loop_s=GRACEFUL_WAIT_LOOP_S,
                               max_ongoing_requests=options.replicas * (options.max_batch + options.max_queue))
    return ingress(OpenAIIngress).bind(replicas, options)


def app_builder(args: dict[str, str]) -> serve.Application:
    """`serve run adapterkit.integrations.ray:app_builder key=value ...`: RayServeOptions' fields as keys."""
    return build_application(RayServeOptions.from_strings(args))
