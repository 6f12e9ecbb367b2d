// A producer written with the official Dapr JavaScript SDK's gRPC DaprClient, as its docs show
// one, for the benchmark's peer rows: `binding.send`, one message after the other (CONCURRENCY
// 1) or CONCURRENCY at once, each sender awaiting its own.
//
// It connects (the SDK waits for its sidecar at start), sends WARM messages, and says `ready`.
// Each SIGUSR2 then starts a run of COUNT messages, which ends with a `sent` line; SIGTERM ends
// it.
//
// Usage: node producer.js BINDING COUNT WARM CONCURRENCY DAPR_GRPC_PORT

const { DaprClient, CommunicationProtocolEnum } = require("@dapr/dapr");

const [binding, count, warm, concurrency, daprPort] = process.argv.slice(2);
const message = { text: "Hello World" };

const client = new DaprClient({
  daprHost: "127.0.0.1",
  daprPort,
  communicationProtocol: CommunicationProtocolEnum.GRPC,
});

// `total` messages, `inFlight` senders at a time.
async function send(total, inFlight) {
  let started = 0;
  async function sender() {
    while (started < total) {
      started += 1;
      await client.binding.send(binding, "create", message);
    }
  }
  await Promise.all(Array.from({ length: inFlight }, sender));
}

async function main() {
  await client.start();
  await send(Number(warm), Number(concurrency));
  // Nothing else keeps the process up between runs: signal listeners do not.
  const idle = setInterval(() => {}, 1 << 30);
  let run = 0;
  let running = Promise.resolve();
  process.on("SIGUSR2", () => {
    running = running.then(async () => {
      run += 1;
      await send(Number(count), Number(concurrency));
      console.log(JSON.stringify({ message: "sent", run }));
    }).catch((error) => {
      console.error(error);
      process.exit(1);
    });
  });
  process.once("SIGTERM", () => {
    clearInterval(idle);
    running.then(() => client.stop()).then(() => process.exit(0), () => process.exit(1));
  });
  console.log(JSON.stringify({ message: "ready" }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
