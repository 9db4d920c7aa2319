// An HTTP session through the official TypeScript SDK client (tests/test_mcp_http_clients.py):
//   node ts_http_client.mjs SDK_DIR URL TOKEN
// Connects, prints {"ready": …} once initialized, waits for a line on stdin (the test looks at `ls` meanwhile),
// calls tools, prints {"done": …}, and ends the session (DELETE).
import { createInterface } from "node:readline";
import { pathToFileURL } from "node:url";

const [sdkDir, url, token] = process.argv.slice(2);
const load = (path) => import(pathToFileURL(`${sdkDir}/dist/esm/${path}`).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-client", version: "1.0.0" });
await client.connect(transport);
const progress = [];
console.log(JSON.stringify({ ready: { server: client.getServerVersion()?.name, session: transport.sessionId } }));
const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once("line", resolve));
lines.close();

const tools = await client.listTools();
const echoed = await client.callTool({ name: "echo", arguments: { message: "from typescript" } });
const long = await client.callTool(
  { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
  undefined,
  { onprogress: (p) => progress.push([p.progress, p.total]) },
);
const text = (result) => result.content.map((block) => block.text ?? "").join("");
console.log(JSON.stringify({ done: { tools: tools.tools.length, echoed: text(echoed), long: text(long), progress } }));
await transport.terminateSession();
await client.close();
