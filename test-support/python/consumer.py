"""A consumer written with the official Dapr Python SDK's gRPC App, as a new user would write one.

It serves BINDING on 127.0.0.1:PORT; each event is printed as a JSON line. An event whose text is
"poison" raises, so the sidecar sees the call fail, as it would see any app's exception.
SIGTERM stops the server and the script exits 0.

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
    text = json.loads(request.text())['text']
    print(
        json.dumps(
            {'message': 'event', 'text': text, 'metadata': dict(request.binding_metadata)}
        ),
        flush=True,
    )
    if text == 'poison':
        raise ValueError('poison message')


signal.signal(signal.SIGTERM, lambda *_: app.stop())
print(json.dumps({'message': 'serving', 'port': port}), flush=True)
app.run(port, '127.0.0.1')
