// A consumer written with the official Dapr JavaScript SDK's gRPC DaprServer, as its docs show
// one, for the benchmark's peer rows: the SDK decodes each event's JSON payload, and the handler
// does nothing more (zero work, no line per message).
//
// Usage: node consumer.js BINDING PORT DAPR_GRPC_PORT (the sidecar's, which DaprServer's client
// waits for at start)

const { DaprServer, CommunicationProtocolEnum } = require("@dapr/dapr");

const [binding, serverPort, daprPort] = process.argv.slice(2);

async function main() {
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort,
    communicationProtocol: CommunicationProtocolEnum.GRPC,
    clientOptions: { daprHost: "127.0.0.1", daprPort },
  });
  await server.binding.receive(binding, async () => {});
  await server.start();
  // At once: the SDK's server.stop() waits for every HTTP/2 connection to close, and the
  // sidecar keeps its own open.
  process.once("SIGTERM", () => process.exit(0));
  console.log(JSON.stringify({ message: "serving", port: serverPort }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
