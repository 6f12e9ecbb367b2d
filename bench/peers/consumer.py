"""A consumer written with the official Dapr Python SDK's gRPC App, as its docs show one, for the
benchmark's peer rows: each event's payload is decoded, as our consumer decodes it, and nothing
else is done (zero work, no line per message).

Usage: python consumer.py BINDING PORT
"""

import json
import signal
import sys

from dapr.ext.grpc import App, BindingRequest

binding, port = sys.argv[1], int(sys.argv[2])
app = App()


@app.binding(binding)
def on_event(request: BindingRequest):
    json.loads(request.text())['text']


signal.signal(signal.SIGTERM, lambda *_: app.stop())
print(json.dumps({'message': 'serving', 'port': port}), flush=True)
app.run(port, '127.0.0.1')
