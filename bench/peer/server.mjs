// The benchmark's real peer: node oidc-provider's /token endpoint issuing RFC 9068 JWT access
// tokens, signed with EdDSA (Ed25519), for client_credentials with client_secret_basic: the
// same grant Rotor's /oauth2/token answers. bench/peer.py starts it:
//
//     node server.mjs PORT CLIENT_ID CLIENT_SECRET AUDIENCE
//
// It prints "ready PORT" once it listens; /jwks serves its public key.
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const [port, clientId, clientSecret, audience] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('ed25519');
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'bench-ed25519', alg: 'EdDSA', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      id_token_signed_response_alg: 'EdDSA',
    },
  ],
  jwks: { keys: [jwk] },
  enabledJWA: { idTokenSigningAlgValues: ['EdDSA'] },
  routes: { token: '/token', jwks: '/jwks' },
  ttl: { ClientCredentials: 300 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // a request without `resource` gets a token for the one resource server
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        audience,
        scope: '',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'EdDSA' } },
      }),
    },
  },
});
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const server = createServer(provider.callback());
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.log(`ready ${server.address().port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
