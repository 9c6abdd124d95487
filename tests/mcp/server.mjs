// An MCP server behind OAuth, built with the official MCP TypeScript SDK, for
// tests/stdio.rs. Every request needs `Authorization: Bearer TOKEN`, where TOKEN is
// one the test's issuer considers valid: each one is checked against INTROSPECT_URL
// (RFC 7662 shaped: POST token=... -> {"active": bool}); anything else gets
// `401` with `WWW-Authenticate: Bearer`.
//
//   node server.mjs streamable|sse INTROSPECT_URL
//
// Prints one JSON line when listening: {"url": "http://127.0.0.1:PORT/mcp"} (or
// /sse for the HTTP+SSE transport of 2024-11-05). GET /stats (no token) tells what
// the test cannot see from outside: sessions, DELETEs, resumptions.
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
import { z } from 'zod';

const [mode, introspectUrl] = process.argv.slice(2);
if (!['streamable', 'sse'].includes(mode) || !introspectUrl) {
  console.error('usage: node server.mjs streamable|sse INTROSPECT_URL');
  process.exit(2);
}

const stats = { initializes: 0, deletes: 0, resumes: 0, gets: 0, unauthorized: 0, posts: 0 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Event store for resumability: ids are a global sequence, replay is per stream.
class EventStore {
  constructor() { this.seq = 0; this.events = []; }
  async storeEvent(streamId, message) {
    const id = String(++this.seq);
    this.events.push({ id, streamId, message });
    return id;
  }
  async getStreamIdForEventId(id) {
    return this.events.find((e) => e.id === id)?.streamId;
  }
  async replayEventsAfter(lastId, { send }) {
    const last = this.events.find((e) => e.id === lastId);
    if (!last) return '';
    for (const e of this.events) {
      if (e.streamId === last.streamId && Number(e.id) > Number(lastId)) {
        await send(e.id, e.message);
      }
    }
    return last.streamId;
  }
}

function makeServer() {
  const server = new McpServer({ name: 'tokenwarden-test-remote', version: '1.0.0' },
    { capabilities: { logging: {} } });
  server.tool('echo', 'Echo the text back', { text: z.string() }, async ({ text }) => ({
    content: [{ type: 'text', text }],
  }));
  server.tool('slow_count', 'Count to n, with a progress notification per step',
    { n: z.number().int().min(1).max(1000), interval_ms: z.number().int().min(0).max(1000) },
    async ({ n, interval_ms }, extra) => {
      const token = extra._meta?.progressToken;
      for (let i = 1; i <= n; i++) {
        if (token !== undefined) {
          await extra.sendNotification({ method: 'notifications/progress',
            params: { progressToken: token, progress: i, total: n } });
        }
        await sleep(interval_ms);
      }
      return { content: [{ type: 'text', text: `counted to ${n}` }] };
    });
  // The answer's stream is closed by the server after the first progress event (as a
  // server that does not hold long connections does); the other progress events are
  // sent while it is closed (kept in the event store), and the answer once the client
  // has resumed the stream with Last-Event-ID. (Sending while the resume is being
  // replayed can lose an event in the SDK's server: that race is kept out of the test.)
  server.tool('dropping_count', 'Count to n, closing the answer stream after step 1',
    { n: z.number().int().min(2).max(100) },
    async ({ n }, extra) => {
      const token = extra._meta?.progressToken;
      const resumes = stats.resumes;
      for (let i = 1; i <= n; i++) {
        if (token !== undefined) {
          await extra.sendNotification({ method: 'notifications/progress',
            params: { progressToken: token, progress: i, total: n } });
        }
        if (i === 1) {
          if (!extra.closeSSEStream) throw new Error('no closeSSEStream: no event store?');
          extra.closeSSEStream();
        }
      }
      for (let t = 0; stats.resumes === resumes; t++) {
        if (t > 500) throw new Error('the client never resumed the stream');
        await sleep(10);
      }
      await sleep(100);
      return { content: [{ type: 'text', text: `counted to ${n} across a dropped stream` }] };
    });
  // Sends a log message on the server's own (GET) stream, drops that stream, then
  // sends `text` on it: that one reaches the client only if the client resumes the
  // stream with Last-Event-ID (the SDK keeps it in the event store meanwhile).
  server.tool('drop_server_stream', 'Drop the GET stream, then send a log message on it',
    { text: z.string() },
    async ({ text }, extra) => {
      if (!extra.closeStandaloneSSEStream) throw new Error('no closeStandaloneSSEStream');
      await server.server.sendLoggingMessage({ level: 'info', data: `before the drop: ${text}` });
      extra.closeStandaloneSSEStream();
      await server.server.sendLoggingMessage({ level: 'info', data: text });
      return { content: [{ type: 'text', text: 'dropped' }] };
    });
  return server;
}

async function authorized(req, res) {
  const auth = req.headers.authorization ?? '';
  const token = auth.startsWith('Bearer ') ? auth.slice(7) : '';
  let active = false;
  if (token) {
    const r = await fetch(introspectUrl, { method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }).toString() });
    active = r.ok && (await r.json()).active === true;
  }
  if (!active) {
    stats.unauthorized++;
    res.writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token"',
      'content-type': 'application/json' });
    res.end(JSON.stringify({ error: 'invalid_token' }));
  }
  return active;
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const streamable = new Map(); // session id -> transport
const legacy = new Map(); // session id -> SSEServerTransport

async function handleStreamable(req, res, url) {
  if (url.pathname !== '/mcp') { res.writeHead(404).end(); return; }
  const sid = req.headers['mcp-session-id'];
  if (req.method === 'GET') {
    stats.gets++;
    if (req.headers['last-event-id']) stats.resumes++;
  }
  if (req.method === 'DELETE') stats.deletes++;
  if (req.method === 'POST') {
    stats.posts++;
    const body = await readJson(req);
    let transport = sid ? streamable.get(sid) : undefined;
    if (!transport) {
      const isInit = body && !Array.isArray(body) && body.method === 'initialize';
      if (sid || !isInit) {
        res.writeHead(sid ? 404 : 400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ jsonrpc: '2.0', id: null,
          error: { code: -32000, message: sid ? 'Session not found' : 'No session' } }));
        return;
      }
      stats.initializes++;
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: new EventStore(),
        retryInterval: 100,
        onsessioninitialized: (id) => streamable.set(id, transport),
      });
      transport.onclose = () => { if (transport.sessionId) streamable.delete(transport.sessionId); };
      await makeServer().connect(transport);
    }
    await transport.handleRequest(req, res, body);
    return;
  }
  const transport = sid ? streamable.get(sid) : undefined;
  if (!transport) {
    res.writeHead(sid ? 404 : 400, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ jsonrpc: '2.0', id: null,
      error: { code: -32000, message: 'Session not found' } }));
    return;
  }
  await transport.handleRequest(req, res);
}

async function handleLegacy(req, res, url) {
  if (req.method === 'GET' && url.pathname === '/sse') {
    stats.gets++;
    const transport = new SSEServerTransport('/messages', res);
    legacy.set(transport.sessionId, transport);
    res.on('close', () => legacy.delete(transport.sessionId));
    stats.initializes++;
    await makeServer().connect(transport);
    return;
  }
  if (req.method === 'POST' && url.pathname === '/messages') {
    stats.posts++;
    const transport = legacy.get(url.searchParams.get('sessionId'));
    if (!transport) { res.writeHead(404).end('unknown session'); return; }
    await transport.handlePostMessage(req, res);
    return;
  }
  // What an old server says to a Streamable HTTP POST.
  res.writeHead(url.pathname === '/sse' ? 405 : 404).end();
}

const httpServer = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  try {
    if (url.pathname === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(stats));
      return;
    }
    if (!(await authorized(req, res))) return;
    if (mode === 'streamable') await handleStreamable(req, res, url);
    else await handleLegacy(req, res, url);
  } catch (e) {
    console.error(`server: ${req.method} ${url.pathname}: ${e?.stack ?? e}`);
    if (!res.headersSent) res.writeHead(500).end(String(e));
  }
});
httpServer.listen(0, '127.0.0.1', () => {
  const { port } = httpServer.address();
  const path = mode === 'streamable' ? '/mcp' : '/sse';
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}${path}` }));
});
// The test ends this process by closing its stdin (or killing it).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
