"""A producer written with the official Dapr Python SDK, as a new user would write one.

DaprClient() first waits for its sidecar (the SDK polls GET /v1.0/healthz/outbound), then
InvokeBinding creates one message on the queue. The sidecar comes from the SDK's own settings:
DAPR_RUNTIME_HOST, DAPR_HTTP_PORT, DAPR_GRPC_PORT, DAPR_API_TOKEN, DAPR_HEALTH_TIMEOUT.

Usage: python producer.py BINDING TEXT
"""

import json
import sys

from dapr.clients import DaprClient

binding, text = sys.argv[1], sys.argv[2]
with DaprClient() as client:
    client.invoke_binding(binding, 'create', json.dumps({'text': text}))
print(json.dumps({'message': 'invoked', 'binding': binding}), flush=True)
