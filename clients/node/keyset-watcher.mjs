// KeySetWatcher: one tenant's key set and revoked tokens, pushed by Rotor's WatchKeyRotations.
//
//   const watcher = await new KeySetWatcher('127.0.0.1:50051').start();
//   watcher.keys.get(kid)          // { kid, alg, key }: the key, and the ONLY algorithm it verifies
//   watcher.revokedKids.has(kid)   // revoked while we watched: its tokens are refused
//   watcher.revokedJtis.has(jti)   // revoked access tokens, until they expire
//   watcher.isStale()              // Rotor has not confirmed the set for maxStaleness seconds
//
// The first message of a stream is a SNAPSHOT (key set and every unexpired revoked
// token); then every event carries the full key set, TOKEN_REVOKED carries the
// revoked jti, and HEARTBEAT (at least every 15 s) only says the stream is alive.
// After any disconnect the watcher resumes with `after_sequence` (exponential
// backoff with jitter), so no event is missed; while the stream is down it keeps
// the set fresh with GetKeySet, and an unknown kid triggers one fetch
// (single-flight, with a cooldown).
//
// Events are applied one at a time, in order: `sequence` only moves past an
// event once it is applied, so a reconnect never skips one.

import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { importJWK } from 'jose';

// The repo's protos; google/protobuf/* imports resolve to the copies proto-loader ships.
export const PROTO_DIR = fileURLToPath(new URL('../../protos', import.meta.url));
// The asymmetric algorithms Rotor signs with; a key listed with any other (HS*, none) never verifies.
export const SUPPORTED_ALGORITHMS = new Set(['EdDSA', 'ES256', 'ES384', 'PS256', 'RS256']);

const BACKOFF_BASE_MS = 200; // before the first retry; doubles per failure
const BACKOFF_MAX_MS = 30_000;
const IDLE_TIMEOUT_MS = 50_000; // no message for this long (heartbeats come every 15 s at most): the stream is dead
const RPC_TIMEOUT_MS = 10_000;
const PRUNE_EVERY = 512; // revocations between sweeps of expired jtis
const PRUNE_GRACE_S = 300;
const MAX_REPORT_COUNTS = 256; // (outcome, kid) entries per report; the rest go with the next
const MAX_REPORT_KIDS = 64;

/** Milliseconds to wait after `failures` consecutive failures: exponential, capped, jittered in its upper half. */
export function backoff(failures) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 16));
  return ceiling * (0.5 + Math.random() / 2);
}

/** The TokenService client constructor, from protos/rotor/v1 loaded as they are. */
export function loadTokenService(protoDir = PROTO_DIR) {
  const definition = protoLoader.loadSync(['rotor/v1/token_service.proto'], {
    includeDirs: [protoDir],
    keepCase: true, // field names as in the protos: after_sequence, public_jwk_json
    longs: String, // uint64 sequence and int64 seconds as decimal strings: no precision lost
    enums: String,
    defaults: true, // unset scalars and lists read as their defaults; unset messages as null
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).rotor.v1.TokenService;
}

/** The google.rpc.RetryInfo delay (seconds) Rotor attached to an error, if any. */
function retryAfter(err) {
  const raw = err?.metadata?.get?.('grpc-status-details-bin')?.[0];
  if (!raw) return null;
  // google.rpc.Status{details: [Any{type_url, value}]}: RetryInfo{retry_delay: Duration{seconds, nanos}}.
  // A hand-rolled read of the few fields needed, rather than a second proto toolchain.
  for (const any of fields(raw).filter(([n]) => n === 3)) {
    const parts = fields(any[1]);
    const url = parts.find(([n]) => n === 1)?.[1]?.toString();
    const value = parts.find(([n]) => n === 2)?.[1];
    if (url?.endsWith('google.rpc.RetryInfo') && value) {
      const delay = fields(value).find(([n]) => n === 1)?.[1];
      if (!delay) return 0;
      const d = fields(delay);
      return Number(d.find(([n]) => n === 1)?.[1] ?? 0) + Number(d.find(([n]) => n === 2)?.[1] ?? 0) / 1e9;
    }
  }
  return null;
}

/** The top-level fields of a protobuf message: [number, value] (varints as numbers, the rest as Buffers). */
function fields(buffer) {
  const out = [];
  let i = 0;
  const varint = () => {
    let value = 0;
    let shift = 0;
    for (;;) {
      const byte = buffer[i++];
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
      shift += 7;
    }
  };
  while (i < buffer.length) {
    const tag = varint();
    const [number, wire] = [Math.floor(tag / 8), tag % 8];
    if (wire === 0) out.push([number, varint()]);
    else if (wire === 2) {
      const length = varint();
      out.push([number, buffer.subarray(i, i + length)]);
      i += length;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else break;
  }
  return out;
}

const seconds = (ts) => (ts ? Number(ts.seconds) + ts.nanos / 1e9 : 0);

/** One public key, parsed once, with the only algorithm it verifies. Throws when it is not usable. */
export async function verificationKey(kid, alg, jwkJson) {
  if (!SUPPORTED_ALGORITHMS.has(alg)) {
    throw new Error(`key ${kid} has algorithm ${alg}; only ${[...SUPPORTED_ALGORITHMS].join(', ')} verify`);
  }
  const jwk = JSON.parse(jwkJson);
  if (jwk === null || typeof jwk !== 'object' || 'd' in jwk || jwk.kty === 'oct') {
    throw new Error(`key ${kid} is not a public asymmetric JWK`);
  }
  if ((jwk.use ?? 'sig') !== 'sig') throw new Error(`key ${kid} is for ${jwk.use}, not for signatures`);
  if ((jwk.alg ?? alg) !== alg) throw new Error(`key ${kid}: its JWK says alg ${jwk.alg} but it is listed as ${alg}`);
  return { kid, alg, key: await importJWK(jwk, alg) };
}

export class KeySetWatcher extends EventEmitter {
  /**
   * @param {string} target Rotor's host:port
   * @param {object} [options]
   * @param {string} [options.tenant] "" is the default tenant
   * @param {number} [options.maxStaleness] seconds without word from Rotor before the keys are not trusted (300)
   * @param {number} [options.startTimeout] seconds start() waits for the first key set (10)
   * @param {number} [options.fetchCooldown] seconds between unknown-kid fetches (5)
   * @param {grpc.ChannelCredentials} [options.credentials] default: plaintext
   * @param {Record<string, string>} [options.metadata] sent with every call (a watcher may authenticate)
   * @param {string} [options.protoDir] where rotor/v1/*.proto live
   * @param {{info: Function, warn: Function}} [options.logger] default: console
   * @param {string} [options.name] lists this watcher in Rotor's fleet view (metadata x-rotor-watcher),
   *   and makes it report its verifiers' outcomes, the kids it holds and its sequence (ReportVerifications)
   * @param {number} [options.reportInterval] seconds between reports, unless Rotor asks otherwise (10)
   *
   * Emits 'change' (the KeyEvent, after it is applied), 'connected' and 'disconnected' (a reason).
   */
  constructor(target, options = {}) {
    super();
    const {
      tenant = '',
      maxStaleness = 300,
      startTimeout = 10,
      fetchCooldown = 5,
      credentials = grpc.credentials.createInsecure(),
      metadata = {},
      protoDir = PROTO_DIR,
      logger = console,
      name = '',
      reportInterval = 10,
    } = options;
    if (!(maxStaleness > 0)) throw new RangeError('maxStaleness must be a positive number of seconds');
    if (!(reportInterval > 0)) throw new RangeError('reportInterval must be a positive number of seconds');
    this.name = name;
    this.reportInterval = reportInterval;
    /** @type {Set<import('./verify.mjs').Verifier>} the verifiers built on this watcher, whose outcomes it reports */
    this.verifiers = new Set();
    this.reportsSent = 0;
    this._unsent = []; // counts of a report that did not go through
    this.target = target;
    this.tenant = tenant;
    this.maxStaleness = maxStaleness;
    this.log = logger;
    /** @type {Map<string, {kid: string, alg: string, key: CryptoKey}>} replaced whole, never changed in place */
    this.keys = new Map();
    /** @type {Map<string, number>} kid -> revoked at (Unix seconds) */
    this.revokedKids = new Map();
    /** @type {Map<string, number>} jti -> the token's exp (Unix seconds) */
    this.revokedJtis = new Map();
    /** @type {Map<string, number>} client_id -> its tokens issued (iat) before this are revoked */
    this.clientRevocations = new Map();
    this.issuer = '';
    this.keyset = null; // the newest KeySet installed
    this.keysetSequence = 0n;
    this.lastUpdate = null; // Date.now() of Rotor's last word, for people
    this._startTimeout = startTimeout * 1000;
    this._fetchCooldown = fetchCooldown * 1000;
    this._metadata = name ? { ...metadata, 'x-rotor-watcher': name } : metadata;
    const TokenService = loadTokenService(protoDir);
    this._client = new TokenService(target, credentials, {
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 5000,
    });
    this._sequence = 0n; // the last event applied from a stream: where a reconnect resumes
    this._loaded = false;
    this._staleAt = -Infinity; // performance.now() after which the keys are not trusted
    this._connected = false;
    this._lastError = '';
    this._sincePrune = 0;
    this._fetching = false;
    this._lastFetch = -Infinity;
    this._call = null;
    this._closed = false;
    this._outage = false; // the stream went down and has not come back yet
    this._started = false;
    this._wake = null; // ends the current backoff sleep (close)
    this._queue = Promise.resolve(); // key set installs, one at a time
    this._ready = null;
  }

  /** The sequence of the last event applied from the stream, as a BigInt. */
  get sequence() {
    return this._sequence;
  }

  /** Whether the stream is up right now. */
  get connected() {
    return this._connected;
  }

  /** Whether Rotor has not confirmed the key set for maxStaleness seconds (or never sent one). */
  isStale() {
    return !this._loaded || performance.now() > this._staleAt;
  }

  staleMessage() {
    if (!this._loaded) {
      return `no key set has been received from Rotor at ${this.target} yet (last error: ${this._lastError || 'none'}); check that Rotor is reachable`;
    }
    const ago = Math.round((Date.now() - (this.lastUpdate ?? 0)) / 1000);
    return (
      `the key set was last confirmed by Rotor ${ago} s ago, more than maxStaleness (${this.maxStaleness} s); ` +
      `tokens are refused until the watcher reaches Rotor at ${this.target} again (last error: ${this._lastError || 'none'})`
    );
  }

  /** Connect, and resolve with this watcher once the first key set is in; rejects after startTimeout. */
  async start() {
    if (this._started) throw new Error('this KeySetWatcher was started already');
    this._started = true;
    let resolveReady;
    this._ready = new Promise((resolve) => (resolveReady = resolve));
    this._resolveReady = resolveReady;
    this._loop = this._run();
    if (this.name) this._reporting = this._reportLoop();
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `no key set from Rotor at ${this.target} within ${this._startTimeout / 1000} s ` +
                `(last error: ${this._lastError || 'none'}); check the address and that Rotor is running`,
            ),
          ),
        this._startTimeout,
      );
    });
    try {
      await Promise.race([this._ready, timeout]);
    } catch (err) {
      await this.close();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return this;
  }

  /** Stop watching and close the channel; the last key set stays readable until it goes stale. */
  async close() {
    this._closed = true;
    this._call?.cancel();
    this._wake?.();
    this._wakeReport?.();
    this._resolveReady?.(); // a report loop still waiting for the first key set ends too
    await this._loop?.catch(() => {});
    await this._reporting?.catch(() => {});
    this._client.close();
    this._connected = false;
  }

  /**
   * Called by a verifier for a kid it does not know: a hint for the error message.
   * While the stream is up, an unknown kid is simply not Rotor's; while it is down,
   * one GetKeySet (single-flight, with a cooldown) may bring it.
   */
  onUnknownKid(kid) {
    if (this._connected || this._closed) return '';
    if (performance.now() - this._lastFetch < this._fetchCooldown) return '; the key set was re-fetched moments ago';
    if (this._fetching) return '; a key set fetch is in progress: retry shortly';
    this._fetch().catch(() => {});
    return '; the watcher is not connected to Rotor, so it is re-fetching the key set: retry shortly';
  }

  // -- the loop --------------------------------------------------------------------------------

  async _run() {
    let failures = 0;
    while (!this._closed) {
      failures = (await this._watch()) ? 0 : failures + 1;
      if (this._closed) break;
      if (failures === 1) {
        // once per outage; the retries that follow are quiet until the stream is back
        this.log.warn(`rotor: cannot watch the key set at ${this.target} (${this._lastError}); retrying with backoff`);
      }
      await this._fetch(); // keys stay fresh, and contact counted, while the stream is down
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, backoff(failures));
        this._wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** One WatchKeyRotations stream, until it fails; whether Rotor answered at all. */
  async _watch() {
    const request = { tenant: this.tenant, after_sequence: this._sequence.toString() };
    const call = this._client.WatchKeyRotations(request, this._grpcMetadata());
    this._call = call;
    let answered = false;
    let ended = false;
    const live = () => {
      if (answered || ended) return;
      answered = true;
      this._connected = true;
      this._touch();
      if (this._outage) this.log.info(`rotor: watching the key set at ${this.target} again, after sequence ${this._sequence}`);
      this._outage = false;
      this.emit('connected');
    };
    // Headers alone do not prove a live stream (a refusal may send headers, then its status):
    // the first message does, or the call still being open a moment after its headers.
    let grace;
    call.on('metadata', () => {
      grace = setTimeout(live, 1000);
    });
    call.on('status', (status) => {
      ended = true;
      if (status.code !== grpc.status.OK) this._lastError = `${grpc.status[status.code]}: ${status.details}`;
    });
    call.on('error', () => {}); // reported through 'status'; the iterator below ends with it
    let idle;
    const arm = () => {
      clearTimeout(idle);
      idle = setTimeout(() => {
        this._lastError = `no message for ${IDLE_TIMEOUT_MS / 1000} s`;
        call.cancel();
      }, IDLE_TIMEOUT_MS);
    };
    arm();
    try {
      for await (const event of call) {
        arm();
        live();
        await this._apply(event);
      }
      if (!this._lastError) this._lastError = 'the stream ended';
    } catch {
      // the status handler recorded why
    } finally {
      clearTimeout(idle);
      clearTimeout(grace);
      ended = true;
      this._connected = false;
      this._call = null;
      call.cancel();
    }
    this._outage = true;
    if (!this._closed && answered) {
      const level = /^UNAVAILABLE|^CANCELLED/.test(this._lastError) ? 'info' : 'warn';
      this.log[level](
        `rotor: key set stream to ${this.target} ended (${this._lastError}); resuming after sequence ${this._sequence}`,
      );
      this.emit('disconnected', this._lastError);
    }
    return answered;
  }

  async _apply(event) {
    this._touch();
    switch (event.type) {
      case 'KEY_EVENT_TYPE_HEARTBEAT':
        return;
      case 'KEY_EVENT_TYPE_SNAPSHOT':
        this.revokedJtis = new Map(event.revoked_tokens.map((r) => [r.jti, seconds(r.expires_at)]));
        this.clientRevocations = new Map(
          (event.client_revocations ?? []).map((c) => [c.client_id, seconds(c.not_before)]),
        );
        this._sincePrune = 0;
        break;
      case 'KEY_EVENT_TYPE_KEY_REVOKED':
        if (event.key) this._revokeKey(event.key.kid, seconds(event.key.revoked_at ?? event.occurred_at));
        break;
      case 'KEY_EVENT_TYPE_TOKEN_REVOKED':
        if (event.revoked_token) this._revokeJti(event.revoked_token.jti, seconds(event.revoked_token.expires_at));
        break;
      case 'KEY_EVENT_TYPE_CLIENT_REVOKED':
        if (event.client_revocation) {
          const { client_id: clientId, not_before: notBefore } = event.client_revocation;
          this.clientRevocations.set(clientId, Math.max(seconds(notBefore), this.clientRevocations.get(clientId) ?? 0));
        }
        break;
      default:
        break;
    }
    if (event.keyset) await this._install(event.keyset);
    const sequence = BigInt(event.sequence);
    if (sequence > this._sequence) this._sequence = sequence;
    this.emit('change', event);
  }

  /** GetKeySet; whether it answered. Installs through the same queue as stream events. */
  async _fetch() {
    if (this._fetching) return false;
    this._fetching = true;
    this._lastFetch = performance.now();
    try {
      const keyset = await new Promise((resolve, reject) => {
        this._client.GetKeySet(
          { tenant: this.tenant },
          this._grpcMetadata(),
          { deadline: Date.now() + RPC_TIMEOUT_MS },
          (err, response) => (err ? reject(err) : resolve(response)),
        );
      });
      await this._install(keyset);
      this._touch();
      return true;
    } catch (err) {
      if (err.code !== undefined) this._lastError = `${grpc.status[err.code]}: ${err.details}`;
      else this.log.warn(`rotor: key set fetch failed: ${err.message}`);
      return false;
    } finally {
      this._fetching = false;
    }
  }

  // -- reports (named watchers) -----------------------------------------------------------------

  async _reportLoop() {
    await this._ready;
    let failures = 0;
    while (!this._closed) {
      let delay;
      try {
        delay = await this.report();
        failures = 0;
      } catch (err) {
        if (err.code === grpc.status.UNIMPLEMENTED) {
          this.log.info(`rotor: Rotor at ${this.target} takes no verification reports (an older version)`);
          return;
        }
        failures += 1;
        delay = retryAfter(err) ?? Math.min(backoff(failures) / 1000, this.reportInterval);
        this.log.warn(`rotor: verification report to ${this.target} failed (${err.details ?? err.message}); retrying in ${delay.toFixed(1)} s`);
      }
      if (this._closed) break;
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, delay * 1000);
        this._wakeReport = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Send one report now; resolves with the seconds until the next is due. Counts that do not go through go with the next. */
  async report() {
    const merged = new Map();
    for (const part of [this._unsent, ...[...this.verifiers].map((v) => v.takeUnreported())]) {
      for (const { outcome, kid, count } of part) {
        const key = `${outcome} ${kid}`;
        merged.set(key, { outcome, kid, count: (merged.get(key)?.count ?? 0) + count });
      }
    }
    const entries = [...merged.values()].sort((a, b) => b.count - a.count);
    const sent = entries.slice(0, MAX_REPORT_COUNTS);
    this._unsent = entries.slice(MAX_REPORT_COUNTS);
    const request = {
      tenant: this.tenant,
      watcher: this.name,
      sequence: this._sequence.toString(),
      kids: [...this.keys.keys()].sort().slice(0, MAX_REPORT_KIDS),
      counts: sent.map(({ outcome, kid, count }) => ({ outcome, kid, count: String(count) })),
    };
    try {
      const response = await new Promise((resolve, reject) => {
        this._client.ReportVerifications(
          request,
          this._grpcMetadata(),
          { deadline: Date.now() + RPC_TIMEOUT_MS },
          (err, answer) => (err ? reject(err) : resolve(answer)),
        );
      });
      this.reportsSent += 1;
      const asked = seconds(response.next_report_in);
      return asked > 0 ? asked : this.reportInterval;
    } catch (err) {
      if (err.code !== grpc.status.INVALID_ARGUMENT) this._unsent = [...sent, ...this._unsent]; // a refused report is not re-sent
      throw err;
    }
  }

  // -- the state ---------------------------------------------------------------------------------

  /** Adopt `keyset` unless a newer one is installed already. */
  _install(keyset) {
    const next = this._queue.then(async () => {
      const sequence = BigInt(keyset.sequence);
      if (this._loaded && sequence < this.keysetSequence) return false;
      const keys = new Map();
      for (const { kid, alg, public_jwk_json: jwk } of keyset.keys) {
        if (this.revokedKids.has(kid)) continue; // an older set may still list it; it never verifies again
        const known = this.keys.get(kid);
        if (known && known.alg === alg) {
          keys.set(kid, known); // keys never change under a kid (it is their thumbprint)
          continue;
        }
        try {
          keys.set(kid, await verificationKey(kid, alg, jwk));
        } catch (err) {
          this.log.warn(`rotor: ignoring key ${kid} of tenant ${JSON.stringify(keyset.tenant)}: ${err.message}`);
        }
      }
      this.keys = keys;
      this.keyset = keyset;
      this.issuer = keyset.issuer;
      this.keysetSequence = sequence;
      this._loaded = true;
      this._touch();
      this._resolveReady?.();
      return true;
    });
    this._queue = next.catch(() => {});
    return next;
  }

  _revokeKey(kid, revokedAt) {
    this.revokedKids.set(kid, revokedAt);
    if (this.keys.has(kid)) {
      const keys = new Map(this.keys);
      keys.delete(kid);
      this.keys = keys;
    }
  }

  _revokeJti(jti, expiresAt) {
    this.revokedJtis.set(jti, expiresAt);
    if (++this._sincePrune >= PRUNE_EVERY) this.prune();
  }

  /** Forget revoked jtis of tokens long expired (their `exp` rejects them anyway). */
  prune(grace = PRUNE_GRACE_S) {
    const cutoff = Date.now() / 1000 - grace;
    for (const [jti, exp] of this.revokedJtis) if (exp < cutoff) this.revokedJtis.delete(jti);
    this._sincePrune = 0;
  }

  /** Rotor confirmed the key set just now. */
  _touch() {
    this.lastUpdate = Date.now();
    if (this._loaded) this._staleAt = performance.now() + this.maxStaleness * 1000;
  }

  _grpcMetadata() {
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries(this._metadata)) metadata.set(key, value);
    return metadata;
  }
}
