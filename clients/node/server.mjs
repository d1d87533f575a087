// An example HTTP service that accepts only Rotor access tokens, verified locally per request.
//
//   ROTOR=127.0.0.1:50051 ROTOR_ISSUER=https://tokens.internal AUDIENCE=demo-api PORT=8080 node server.mjs
//
// GET /orders with `Authorization: Bearer <token>` answers 200 and
// {client_id, sub, scopes}; a bad token gets 401 and {reason, message}
// (reason as in verify.mjs). While the key set is stale (Rotor unreachable
// for longer than MAX_STALENESS seconds), requests get 503 KEY_SET_STALE: not the
// caller's fault, retry later. GET /healthz says whether the key set is fresh.
//
// The keys come from Rotor's WatchKeyRotations stream (keyset-watcher.mjs): a
// rotation or revocation applies at once, with no restart and no call to Rotor
// per request.

import http from 'node:http';

import { KeySetWatcher } from './keyset-watcher.mjs';
import { TokenError, Verifier } from './verify.mjs';

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`${name} is not set; see README.md (after \`make run\`, paste the export line it printed)`);
    process.exit(2);
  }
  return value;
}

const ROTOR = required('ROTOR');
const ISSUER = required('ROTOR_ISSUER');
const AUDIENCE = process.env.AUDIENCE || 'demo-api';
const TENANT = process.env.TENANT ?? '';
const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT ?? 8080);
const MAX_STALENESS = Number(process.env.MAX_STALENESS || 300);
const WATCHER_NAME = process.env.WATCHER_NAME ?? ''; // a name lists this service in Rotor's fleet view, with its verification counts
const REPORT_INTERVAL = Number(process.env.REPORT_INTERVAL || 10);

function send(res, status, body, headers = {}) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

function reject(res, reason, message) {
  if (reason === 'KEY_SET_STALE') {
    send(res, 503, { reason, message }, { 'retry-after': '5' });
    return;
  }
  // RFC 6750 §3: say why in WWW-Authenticate too (quoted-string safe: no quotes or backslashes)
  const description = message.replace(/["\\]/g, "'").slice(0, 200);
  const error = reason === 'TOKEN_MISSING' ? '' : `, error="invalid_token", error_description="${description}"`;
  send(res, 401, { reason, message }, { 'www-authenticate': `Bearer realm="${AUDIENCE}"${error}` });
}

async function main() {
  const watcher = await new KeySetWatcher(ROTOR, {
    tenant: TENANT,
    maxStaleness: MAX_STALENESS,
    name: WATCHER_NAME,
    reportInterval: REPORT_INTERVAL,
  }).start();
  const verifier = new Verifier(watcher, { issuer: ISSUER, audience: AUDIENCE });

  const server = http.createServer(async (req, res) => {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path === '/healthz') {
      const stale = watcher.isStale();
      send(res, stale ? 503 : 200, {
        key_set: stale ? 'stale' : 'fresh',
        connected: watcher.connected,
        sequence: watcher.sequence.toString(),
        keys: [...watcher.keys.keys()],
      });
      return;
    }
    if (path !== '/orders') {
      send(res, 404, { reason: 'NOT_FOUND', message: `no ${path} here; try GET /orders` });
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(res, 405, { reason: 'METHOD_NOT_ALLOWED', message: 'use GET /orders' }, { allow: 'GET, HEAD' });
      return;
    }
    const match = /^Bearer +([^ ]+) *$/i.exec(req.headers.authorization ?? '');
    if (!match) {
      reject(res, 'TOKEN_MISSING', "send the access token as 'Authorization: Bearer <token>'");
      return;
    }
    try {
      const claims = await verifier.verify(match[1]);
      send(res, 200, { client_id: claims.client_id, sub: claims.sub, scopes: claims.scopes });
    } catch (err) {
      if (err instanceof TokenError) {
        reject(res, err.reason, err.message);
      } else {
        console.error('verifying a token failed unexpectedly:', err);
        send(res, 500, { reason: 'INTERNAL', message: 'the token could not be checked; see the service log' });
      }
    }
  });

  const shutdown = () => {
    server.close();
    server.closeIdleConnections?.();
    watcher.close().finally(() => process.exit(0));
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);

  server.listen(PORT, HOST, () => {
    const { address, port } = server.address();
    const host = address.includes(':') ? `[${address}]` : address;
    console.log(`listening on http://${host}:${port} (audience ${AUDIENCE}, keys from Rotor at ${ROTOR}, sequence ${watcher.sequence})`);
  });
}

main().catch((err) => {
  console.error(`cannot start: ${err.message}`);
  process.exit(1);
});
