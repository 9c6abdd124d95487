// An MCP client built with the official MCP TypeScript SDK, for tests/stdio.rs: it
// spawns a stdio MCP server the way Claude Desktop does (StdioClientTransport) and
// takes its orders as JSON lines on stdin, answering each with one JSON line:
//
//   node client.mjs COMMAND [ARGS...]     (the server's environment: this one's)
//
//   {"op":"connect"}                       initialize (+ initialized)
//   {"op":"list"}                          tools/list
//   {"op":"call","name":N,"args":{...}}    tools/call, with a progress token
//   {"op":"notes"}                         the notifications received so far
//   {"op":"close"}                         close stdin, wait for the exit
//
// Each answer: {"ok":true,...} or {"ok":false,"error":{"code":..,"message":..}},
// with "ms" (how long it took) and the server's "pid".
import readline from 'node:readline';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: 'inherit' });
const client = new Client({ name: 'tokenwarden-test-client', version: '1.0.0' });
const notes = [];
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { notes.push(n); });
let exit = null;
let pid = null;
// Record the server's exit (code, signal) however it ends.
const start = transport.start.bind(transport);
transport.start = () => {
  const started = start();
  pid = transport._process?.pid ?? null;
  transport._process?.once('exit', (code, signal) => { exit = { code, signal }; });
  return started;
};
// Requests wait this long (the SDK's default is 60 s): the bridge must answer sooner.
const TIMEOUT_MS = Number(process.env.MCP_TEST_TIMEOUT_MS ?? 20000);

function say(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }
function failure(e) {
  return { code: e?.code ?? null, message: String(e?.message ?? e) };
}

async function run(cmd) {
  const started = Date.now();
  const done = (o) => say({ ...o, ms: Date.now() - started, pid });
  try {
    switch (cmd.op) {
      case 'connect': {
        await client.connect(transport, { timeout: TIMEOUT_MS });
        done({ ok: true, server: client.getServerVersion() });
        break;
      }
      case 'list': {
        const r = await client.listTools({}, { timeout: TIMEOUT_MS });
        done({ ok: true, tools: r.tools.map((t) => t.name) });
        break;
      }
      case 'call': {
        let progress = 0;
        const r = await client.callTool({ name: cmd.name, arguments: cmd.args ?? {} }, undefined,
          { timeout: TIMEOUT_MS, onprogress: () => { progress++; } });
        done({ ok: !r.isError, result: r, progress });
        break;
      }
      case 'notes': {
        done({ ok: true, notes });
        break;
      }
      case 'close': {
        await client.close();
        for (let i = 0; exit === null && i < 500; i++) await new Promise((r) => setTimeout(r, 10));
        done({ ok: true, exit });
        break;
      }
      default:
        done({ ok: false, error: { code: null, message: `unknown op ${cmd.op}` } });
    }
  } catch (e) {
    done({ ok: false, error: failure(e) });
  }
}

const rl = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
rl.on('line', (line) => {
  if (!line.trim()) return;
  queue.push(JSON.parse(line));
  pump();
});
rl.on('close', async () => {
  while (busy || queue.length) await new Promise((r) => setTimeout(r, 10));
  await client.close().catch(() => {});
  process.exit(0);
});
async function pump() {
  if (busy) return;
  busy = true;
  while (queue.length) await run(queue.shift());
  busy = false;
}
