// Local verification of Rotor access tokens (RFC 9068 JWTs), with no call to Rotor.
//
//   const verifier = new Verifier(watcher, { issuer: 'https://tokens.internal', audience: 'orders' });
//   const claims = await verifier.verify(token); // or throws a TokenError with a `reason`
//
// Nothing in a token's header is trusted over the key set: the key is chosen by
// `kid` alone and verifies only with its own `alg` (jose is told
// `algorithms: [key.alg]`). Headers that point a verifier at key material of the
// token's choosing (`jku`, `x5u`, `jwk`, `x5c`) or at extensions it would have to
// understand (`crit`) are refused.
//
// The reasons are those of the Python library (rotor_client.errors):
// TOKEN_MALFORMED, TOKEN_EXPIRED, TOKEN_NOT_YET_VALID, INVALID_SIGNATURE,
// UNKNOWN_KEY, KEY_REVOKED, TOKEN_REVOKED, INVALID_ISSUER, INVALID_AUDIENCE,
// INSUFFICIENT_SCOPE, and KEY_SET_STALE (not the token's fault: Rotor has not
// confirmed the keys for too long).

import { errors, jwtVerify } from 'jose';

export const MAX_TOKEN_LENGTH = 16 * 1024; // characters; Rotor's tokens are well under 2 KiB
const ACCEPTED_TYPES = new Set(['at+jwt', 'application/at+jwt']); // RFC 9068 §2.1, case-insensitive
const FORBIDDEN_HEADERS = ['crit', 'jku', 'x5u', 'jwk', 'x5c'];
const REQUIRED_CLAIMS = ['iss', 'sub', 'aud', 'exp', 'iat', 'jti', 'client_id'];
// three base64url parts and nothing else: a lenient decoder would let one token be written many ways
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

/** A token that must not be trusted (or a key set too stale to tell): `reason` says which. */
export class TokenError extends Error {
  constructor(reason, message) {
    super(message);
    this.name = 'TokenError';
    this.reason = reason;
  }
}

const MAX_SERIES = 256; // (outcome, kid) pairs counted per verifier; past it, new kids count under ""
const MAX_KID = 128; // longer (or unprintable) kids, as a forged token may carry, count under ""

/** The header's kid, if the token has a readable one ("" otherwise): for counting only. */
function kidOf(token) {
  if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) return '';
  try {
    const kid = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString('utf8'))?.kid;
    return typeof kid === 'string' ? kid : '';
  } catch {
    return '';
  }
}

const countableKid = (kid) => (kid.length <= MAX_KID && /^[\x21-\x7e]*$/.test(kid) ? kid : '');

const utc = (seconds) => new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
const short = (value, n) => String(value).slice(0, n);

function decodeHeader(part) {
  let header;
  try {
    header = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new TokenError('TOKEN_MALFORMED', "the token's header is not base64url-encoded JSON; pass the token exactly as issued");
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new TokenError('TOKEN_MALFORMED', "the token's header is not a JSON object");
  }
  return header;
}

export class Verifier {
  /**
   * @param {import('./keyset-watcher.mjs').KeySetWatcher} watcher
   * @param {object} options
   * @param {string} options.issuer the `issuer` Rotor is configured with
   * @param {string | string[]} options.audience the name(s) this service is known by in tokens' `aud`
   * @param {string[]} [options.requiredScopes]
   * @param {number} [options.leeway] seconds of clock skew tolerated on exp/nbf (30)
   */
  constructor(watcher, { issuer, audience, requiredScopes = [], leeway = 30 } = {}) {
    if (!issuer) throw new TypeError('issuer is required: the `issuer` Rotor is configured with');
    const audiences = typeof audience === 'string' ? [audience] : [...(audience ?? [])];
    if (audiences.length === 0 || !audiences.every((a) => typeof a === 'string' && a)) {
      throw new TypeError("audience is required: the name this service is known by in tokens' `aud`");
    }
    if (!(leeway >= 0)) throw new RangeError('leeway must be zero or more seconds');
    this.watcher = watcher;
    this.issuer = issuer;
    this.audiences = audiences;
    this.requiredScopes = [...requiredScopes];
    this.leeway = leeway;
    /** @type {Map<string, number>} `${outcome} ${kid}` -> count, cumulative */
    this._counts = new Map();
    /** @type {Map<string, number>} the same, not yet reported by the watcher */
    this._unreported = new Map();
    watcher.verifiers?.add(this); // a named watcher reports the counts to Rotor
  }

  /** Every `verify` outcome so far: { OK: n, TOKEN_EXPIRED: n, UNKNOWN_KEY: n, ... }. */
  stats() {
    const out = {};
    for (const [key, count] of this._counts) {
      const outcome = key.slice(0, key.indexOf(' '));
      out[outcome] = (out[outcome] ?? 0) + count;
    }
    return out;
  }

  /** The counts not yet reported, as [{outcome, kid, count}], and start anew (KeySetWatcher's reports). */
  takeUnreported() {
    const taken = [...this._unreported].map(([key, count]) => {
      const at = key.indexOf(' ');
      return { outcome: key.slice(0, at), kid: key.slice(at + 1), count };
    });
    this._unreported = new Map();
    return taken;
  }

  _count(outcome, kid) {
    let key = `${outcome} ${countableKid(kid)}`;
    if (!this._counts.has(key) && this._counts.size >= MAX_SERIES) key = `${outcome} `;
    this._counts.set(key, (this._counts.get(key) ?? 0) + 1);
    this._unreported.set(key, (this._unreported.get(key) ?? 0) + 1);
  }

  /** The token's claims (plus `scopes`, an array) if Rotor issued it for this service and it is still good. */
  async verify(token) {
    const kid = kidOf(token);
    try {
      const claims = await this._verify(token);
      this._count('OK', kid);
      return claims;
    } catch (err) {
      if (err instanceof TokenError) this._count(err.reason, kid);
      throw err;
    }
  }

  async _verify(token) {
    const watcher = this.watcher;
    if (watcher.isStale()) throw new TokenError('KEY_SET_STALE', watcher.staleMessage());
    if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH) {
      throw new TokenError(
        'TOKEN_MALFORMED',
        `the token must be a string of at most ${MAX_TOKEN_LENGTH} characters; pass the access token exactly as issued`,
      );
    }
    if (!COMPACT_JWS.test(token)) {
      throw new TokenError(
        'TOKEN_MALFORMED',
        "the token is not a compact JWS (three base64url parts separated by dots); pass it exactly as issued, without 'Bearer '",
      );
    }
    const header = decodeHeader(token.slice(0, token.indexOf('.')));
    for (const name of FORBIDDEN_HEADERS) {
      if (Object.hasOwn(header, name)) {
        throw new TokenError(
          'TOKEN_MALFORMED',
          `the token's header carries ${JSON.stringify(name)}, which this verifier never honours (keys come only from Rotor's key set)`,
        );
      }
    }
    if (typeof header.typ !== 'string' || !ACCEPTED_TYPES.has(header.typ.toLowerCase())) {
      throw new TokenError(
        'TOKEN_MALFORMED',
        `the token's typ is ${JSON.stringify(short(header.typ, 20))}, not "at+jwt": it is not an RFC 9068 access token`,
      );
    }
    const { kid, alg } = header;
    if (typeof kid !== 'string' || !kid) {
      throw new TokenError('TOKEN_MALFORMED', "the token's header has no kid; Rotor names the signing key in every token");
    }
    if (typeof alg !== 'string') throw new TokenError('TOKEN_MALFORMED', "the token's header has no alg");

    if (watcher.revokedKids.has(kid)) {
      throw new TokenError(
        'KEY_REVOKED',
        `the token is signed by key ${short(kid, 64)}, revoked at ${utc(watcher.revokedKids.get(kid))}; the caller must obtain a new token`,
      );
    }
    const key = watcher.keys.get(kid);
    if (!key) {
      const hint = watcher.onUnknownKid?.(kid) ?? '';
      throw new TokenError(
        'UNKNOWN_KEY',
        `key ${short(kid, 64)} is not in the key set (sequence ${watcher.keysetSequence}): the token was not ` +
          `issued by this Rotor, or for another tenant${hint}`,
      );
    }
    if (alg !== key.alg) {
      throw new TokenError(
        'INVALID_SIGNATURE',
        `the token's header says alg ${JSON.stringify(short(alg, 20))} but key ${kid} is ${key.alg}; ` +
          'a key verifies only with its own algorithm, so this token was not issued by Rotor',
      );
    }

    let payload;
    try {
      ({ payload } = await jwtVerify(token, key.key, {
        algorithms: [key.alg],
        typ: 'at+jwt',
        issuer: this.issuer,
        audience: this.audiences,
        clockTolerance: this.leeway,
        requiredClaims: REQUIRED_CLAIMS,
      }));
    } catch (err) {
      throw this._mapJoseError(err, kid);
    }

    for (const name of ['sub', 'jti', 'client_id']) {
      if (typeof payload[name] !== 'string') throw new TokenError('TOKEN_MALFORMED', `the token's ${name} claim is not a string`);
    }
    if (typeof payload.iat !== 'number') throw new TokenError('TOKEN_MALFORMED', "the token's iat claim is not a number");
    if (watcher.revokedJtis.has(payload.jti)) {
      throw new TokenError('TOKEN_REVOKED', `the token ${short(payload.jti, 32)} was revoked at Rotor; the caller must obtain a new token`);
    }
    const notBefore = watcher.clientRevocations.get(payload.client_id);
    if (notBefore !== undefined && payload.iat < notBefore) {
      throw new TokenError(
        'TOKEN_REVOKED',
        `every token of client ${short(payload.client_id, 64)} issued before ${new Date(notBefore * 1000).toISOString()} was revoked at Rotor; the caller must obtain a new token`,
      );
    }
    const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ').filter(Boolean) : [];
    const missing = this.requiredScopes.filter((s) => !scopes.includes(s));
    if (missing.length > 0) {
      throw new TokenError(
        'INSUFFICIENT_SCOPE',
        `the token lacks the scope ${missing.sort().join(' ')}; the caller must request it when obtaining the token`,
      );
    }
    return { ...payload, scopes };
  }

  _mapJoseError(err, kid) {
    if (err instanceof errors.JWSSignatureVerificationFailed || err instanceof errors.JOSEAlgNotAllowed) {
      return new TokenError(
        'INVALID_SIGNATURE',
        `the signature does not verify with key ${kid}: the token was altered or not issued by this Rotor; obtain a new token`,
      );
    }
    if (err instanceof errors.JWTExpired) {
      return new TokenError(
        'TOKEN_EXPIRED',
        `the token expired at ${utc(err.payload?.exp)} (leeway ${this.leeway} s); the caller must refresh it or obtain a new one`,
      );
    }
    if (err instanceof errors.JWTClaimValidationFailed && err.reason === 'check_failed') {
      const got = err.payload?.[err.claim];
      switch (err.claim) {
        case 'iss':
          return new TokenError(
            'INVALID_ISSUER',
            `the token's issuer is ${JSON.stringify(short(got, 80))}, not ${JSON.stringify(this.issuer)}: it comes from another Rotor`,
          );
        case 'aud':
          return new TokenError(
            'INVALID_AUDIENCE',
            `the token is for ${short(JSON.stringify(got), 80)}, not for ${this.audiences.join(' or ')}; ` +
              "the caller must request a token with this service's audience",
          );
        case 'nbf':
          return new TokenError(
            'TOKEN_NOT_YET_VALID',
            `the token is not valid before ${utc(got)}; the clocks of Rotor and this host disagree by more than the leeway: check NTP`,
          );
        default:
          break;
      }
    }
    if (err instanceof errors.JOSEError) {
      return new TokenError('TOKEN_MALFORMED', `the token is not a well-formed Rotor access token: ${err.message}`);
    }
    return err; // not the token's fault: a bug, let it surface
  }
}
