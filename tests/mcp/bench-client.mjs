// The MCP client of benches/mcp.rs, built with the official MCP TypeScript SDK: one
// Client per path (Streamable HTTP straight to a URL, or a stdio bridge spawned with
// StdioClientTransport, as Claude Desktop starts local servers), each doing the same
// sequential tools/call round trips. The paths take turns in blocks so that drift on
// the machine hits them all alike.
//
//   MCP_BENCH='{"calls":500,"warmup":50,"block":50,"spawns":5,"log_dir":"/tmp/x",
//               "paths":[{"label":"direct","url":"http://...","headers":{...}},
//                        {"label":"bridge","command":"tokenwarden","args":[...],"env":{...}}]}'
//   node bench-client.mjs
//
// Prints one JSON line: {"paths":[{"label", "calls_ms":[...], "init_ms":[...],
// "vm_hwm_kib", "vm_rss_kib", "threads"}]} (the last three for stdio bridges only:
// read from /proc after the run, before the bridge is closed). A failed call ends the
// run with the error on stderr and exit status 1.
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const cfg = JSON.parse(process.env.MCP_BENCH ?? '{}');
if (!Array.isArray(cfg.paths) || !cfg.paths.length || !cfg.log_dir) {
  console.error('bench-client: MCP_BENCH must hold {"paths":[...],"log_dir":...}');
  process.exit(2);
}
const calls = cfg.calls ?? 500;
const warmup = cfg.warmup ?? 50;
const block = cfg.block ?? 50;
const spawns = cfg.spawns ?? 5;
const TIMEOUT_MS = 30000;

function transportOf(p, n) {
  if (p.url) {
    return new StreamableHTTPClientTransport(new URL(p.url), { requestInit: { headers: p.headers ?? {} } });
  }
  const log = fs.openSync(path.join(cfg.log_dir, `${p.label.replace(/\W+/g, '-')}-${n}.stderr`), 'w');
  return new StdioClientTransport({ command: p.command, args: p.args ?? [], env: p.env ?? {}, stderr: log });
}

async function connect(p, n) {
  const transport = transportOf(p, n);
  const client = new Client({ name: 'tokenwarden-bench-client', version: '1.0.0' });
  const t = performance.now();
  await client.connect(transport, { timeout: TIMEOUT_MS });
  return { client, transport, ms: performance.now() - t };
}

let seq = 0;
async function call(client) {
  const text = `call ${++seq}`;
  const r = await client.callTool({ name: 'echo', arguments: { text } }, undefined, { timeout: TIMEOUT_MS });
  if (r.isError || r.content?.[0]?.text !== text) {
    throw new Error(`unexpected answer: ${JSON.stringify(r).slice(0, 300)}`);
  }
}

function procStatus(pid) {
  const out = {};
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
      const [k, v] = line.split(':');
      if (k === 'VmHWM') out.vm_hwm_kib = parseInt(v, 10);
      if (k === 'VmRSS') out.vm_rss_kib = parseInt(v, 10);
      if (k === 'Threads') out.threads = parseInt(v, 10);
    }
  } catch (e) {
    out.error = String(e);
  }
  return out;
}

async function main() {
  const results = cfg.paths.map((p) => ({ label: p.label, calls_ms: [], init_ms: [] }));
  // Spawn (or connect) → initialized, each time with a fresh client and process.
  for (let i = 0; i < spawns; i++) {
    for (const [k, p] of cfg.paths.entries()) {
      const c = await connect(p, `init${i}`);
      results[k].init_ms.push(c.ms);
      await call(c.client);
      await c.client.close();
    }
  }
  const live = [];
  for (const [k, p] of cfg.paths.entries()) {
    const c = await connect(p, 'run');
    results[k].init_ms.push(c.ms);
    live.push(c);
  }
  for (const c of live) for (let i = 0; i < warmup; i++) await call(c.client);
  while (results[0].calls_ms.length < calls) {
    for (const [k, c] of live.entries()) {
      for (let i = 0; i < block; i++) {
        const t = performance.now();
        await call(c.client);
        results[k].calls_ms.push(performance.now() - t);
      }
    }
  }
  for (const [k, c] of live.entries()) {
    const pid = c.transport.pid ?? c.transport._process?.pid;
    if (pid) Object.assign(results[k], { pid }, procStatus(pid));
  }
  for (const c of live) await c.client.close();
  process.stdout.write(JSON.stringify({ paths: results }) + '\n');
}

main().then(() => process.exit(0), (e) => {
  console.error(`bench-client: ${e?.stack ?? e}`);
  process.exit(1);
});
