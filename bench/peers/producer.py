"""A producer written with the official Dapr Python SDK's DaprClient, as its docs show one, for the
benchmark's peer rows: `invoke_binding`, one message after the other.

It connects (the SDK first waits for its sidecar, from DAPR_RUNTIME_HOST, DAPR_HTTP_PORT and
DAPR_GRPC_PORT), sends WARM messages, and says `ready`. Each SIGUSR2 then starts a run of COUNT
messages, which ends with a `sent` line; SIGTERM ends it.

Usage: python producer.py BINDING COUNT WARM
"""

import signal

# Blocked before any thread starts (gRPC's own included), so that only sigwait below takes them.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGTERM})

import json  # noqa: E402
import sys  # noqa: E402

from dapr.clients import DaprClient  # noqa: E402

binding, count, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = '{"text":"Hello World"}'

with DaprClient() as client:
    for _ in range(warm):
        client.invoke_binding(binding, 'create', data)
    print(json.dumps({'message': 'ready'}), flush=True)
    run = 0
    while signal.sigwait({signal.SIGUSR2, signal.SIGTERM}) == signal.SIGUSR2:
        run += 1
        for _ in range(count):
            client.invoke_binding(binding, 'create', data)
        print(json.dumps({'message': 'sent', 'run': run}), flush=True)
