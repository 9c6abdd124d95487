// An MCP server for benches/mcp.rs, built with the official MCP TypeScript SDK:
// Streamable HTTP, every answer an SSE stream (the SDK's default), one `echo` tool,
// behind `Authorization: Bearer TOKEN`. A token is checked once against
// INTROSPECT_URL (RFC 7662 shaped: POST token=... -> {"active": bool}) and then
// remembered, as a server validating JWTs locally checks without a round trip.
//
//   node bench-server.mjs nodelay|nagle INTROSPECT_URL
//
// `nodelay`: Node's default (TCP_NODELAY on every accepted socket). `nagle`: every
// accepted socket gets setNoDelay(false), Nagle's algorithm on, as a server that makes
// its sockets itself may have. Prints one JSON line when listening:
// {"url": "http://127.0.0.1:PORT/mcp"}. Ends when its stdin ends.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

const [variant, introspectUrl] = process.argv.slice(2);
if (!['nodelay', 'nagle'].includes(variant) || !introspectUrl) {
  console.error('usage: node bench-server.mjs nodelay|nagle INTROSPECT_URL');
  process.exit(2);
}

const known = new Set();
async function authorized(req, res) {
  const auth = req.headers.authorization ?? '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : '';
  if (token && known.has(token)) return true;
  let active = false;
  if (token) {
    const r = await fetch(introspectUrl, { method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }).toString() });
    active = r.ok && (await r.json()).active === true;
  }
  if (active) {
    known.add(token);
    return true;
  }
  res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"',
    'content-type': 'application/json' });
  res.end(JSON.stringify({ error: 'invalid_token' }));
  return false;
}

function makeServer() {
  const server = new McpServer({ name: 'tokenwarden-bench-remote', version: '1.0.0' });
  server.tool('echo', 'Echo the text back', { text: z.string() }, async ({ text }) => ({
    content: [{ type: 'text', text }],
  }));
  return server;
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const sessions = new Map();
const httpServer = http.createServer({ noDelay: variant === 'nodelay' }, async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (!(await authorized(req, res))) return;
    if (url.pathname !== '/mcp') { res.writeHead(404).end(); return; }
    const sid = req.headers['mcp-session-id'];
    let transport = sid ? sessions.get(sid) : undefined;
    const body = req.method === 'POST' ? await readJson(req) : undefined;
    if (!transport) {
      const isInit = body && !Array.isArray(body) && body.method === 'initialize';
      if (sid || !isInit) {
        res.writeHead(sid ? 404 : 400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ jsonrpc: '2.0', id: null,
          error: { code: -32000, message: sid ? 'Session not found' : 'No session' } }));
        return;
      }
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        onsessioninitialized: (id) => sessions.set(id, transport),
      });
      transport.onclose = () => { if (transport.sessionId) sessions.delete(transport.sessionId); };
      await makeServer().connect(transport);
    }
    await transport.handleRequest(req, res, body);
  } catch (e) {
    console.error(`bench-server: ${req.method} ${url.pathname}: ${e?.stack ?? e}`);
    if (!res.headersSent) res.writeHead(500).end(String(e));
  }
});
// Explicit, whatever the http module's default: Nagle on or off per accepted socket.
httpServer.on('connection', (socket) => socket.setNoDelay(variant === 'nodelay'));
httpServer.listen(0, '127.0.0.1', () => {
  const { port } = httpServer.address();
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}/mcp` }));
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
