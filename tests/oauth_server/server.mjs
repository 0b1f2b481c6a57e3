// Loopback OAuth 2.0 authorization server for the test suite.
//
// This is panva's certified `oidc-provider` configured for tests, not a hand-rolled token
// endpoint: authorization, PKCE, client authentication, code exchange, refresh-token rotation
// and reuse detection are all oidc-provider's own. The only additions are test hooks:
//
//   GET  /interaction/:uid   non-interactive login/consent: logs in a fixed account and grants
//                            everything requested; `?deny=1` (or config `deny_consent`) ends
//                            the interaction with `access_denied` at the consent prompt,
//                            `?deny=login` at the login prompt; `?account=bob` logs in bob.
//   GET  /__stats            {"token_requests", "by_grant", "by_client", "by_status",
//                             "faults_served", "api_requests"}
//   POST /__reset            zero the counters
//   GET  /__faults           pending faults; POST /__faults replaces them, DELETE clears them.
//                            Body: {"token": FAULT | [FAULT, ...], "api": ...} where FAULT is
//                            {"status", "body", "headers", "delay_ms", "close", "count"}.
//   GET  /api/items          protected resource: Bearer access token issued by this server.
//
// Usage: node server.mjs [config.json] [port]
//   (or env OAUTH_SERVER_CONFIG / PORT). Port 0 (default) picks a free port. Prints
//   `READY <issuer>` on stdout once listening. See DEFAULTS below for the config knobs.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

import Provider from 'oidc-provider';

const DEFAULTS = {
  host: '127.0.0.1',
  port: 0,
  redirect_uris: ['http://127.0.0.1/callback'],
  scopes: ['openid', 'offline_access', 'items.read', 'items.write'],
  access_token_ttl: 3600, // seconds, authorization-code / refresh access tokens
  client_credentials_ttl: null, // seconds, null = access_token_ttl
  refresh_token_ttl: 14 * 24 * 3600,
  authorization_code_ttl: 60,
  id_token_ttl: 3600,
  account_id: 'alice',
  deny_consent: false, // every interaction ends with access_denied
  api_required_scope: null, // e.g. "items.read": /api/items answers 403 without it
  items: [
    { id: 1, name: 'widget' },
    { id: 2, name: 'gadget' },
  ],
  clients: {
    'test-client': { client_secret: 'test-client-secret', token_endpoint_auth_method: 'client_secret_post' },
    'test-client-basic': { client_secret: 'test-client-basic-secret', token_endpoint_auth_method: 'client_secret_basic' },
    'm2m-client': { client_secret: 'm2m-client-secret', token_endpoint_auth_method: 'client_secret_basic' },
  },
  log_requests: false, // one stderr line per request
};

const M2M_CLIENT_IDS = new Set(['m2m-client']);

function loadConfig() {
  const path = process.argv[2] || process.env.OAUTH_SERVER_CONFIG;
  const fromFile = path ? JSON.parse(fs.readFileSync(path, 'utf8')) : {};
  const config = { ...DEFAULTS, ...fromFile };
  config.clients = { ...DEFAULTS.clients, ...(fromFile.clients || {}) };
  const portArg = process.argv[3] ?? process.env.PORT;
  if (portArg !== undefined && portArg !== '') config.port = Number(portArg);
  if (config.client_credentials_ttl == null) config.client_credentials_ttl = config.access_token_ttl;
  return config;
}

function buildClients(config) {
  const scope = config.scopes.join(' ');
  return Object.entries(config.clients).map(([clientId, c]) => {
    const m2m = c.m2m ?? M2M_CLIENT_IDS.has(clientId);
    const base = {
      client_id: clientId,
      client_secret: c.client_secret,
      token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
      scope: c.scope || scope,
    };
    if (m2m) {
      return {
        ...base, grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      };
    }
    return {
      ...base,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: c.redirect_uris || config.redirect_uris,
    };
  });
}

// --- test hooks state -------------------------------------------------------------------

function freshStats() {
  return {
    token_requests: 0, by_grant: {}, by_client: {}, by_status: {}, faults_served: 0, api_requests: 0,
  };
}

let stats = freshStats();
const faults = { token: [], api: [] };

function bump(map, key) {
  const k = String(key ?? 'unknown');
  map[k] = (map[k] || 0) + 1;
}

function takeFault(target) {
  const queue = faults[target];
  while (queue.length) {
    const head = queue[0];
    if (head.count > 0) {
      head.count -= 1;
      if (head.count === 0) queue.shift();
      return head;
    }
    queue.shift();
  }
  return undefined;
}

function normalizeFaults(value) {
  if (value == null) return [];
  const list = Array.isArray(value) ? value : [value];
  return list.map((f) => {
    if (typeof f !== 'object' || f === null) throw new TypeError('fault must be an object');
    const count = f.count === undefined ? 1 : Number(f.count);
    if (!Number.isInteger(count) || count < 0) throw new TypeError('fault count must be an integer >= 0');
    return { ...f, count };
  });
}

async function readRaw(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(body);
}

// Applies a fault; returns true when the response was produced (the request must not go on).
async function applyFault(ctx, fault) {
  stats.faults_served += 1;
  if (fault.delay_ms) await sleep(Number(fault.delay_ms));
  if (fault.close) {
    ctx.respond = false;
    ctx.req.socket.destroy();
    return true;
  }
  if (fault.status === undefined && fault.body === undefined) return false; // delay only
  const status = fault.status === undefined ? 200 : Number(fault.status);
  ctx.status = status;
  for (const [name, value] of Object.entries(fault.headers || {})) ctx.set(name, String(value));
  let { body } = fault;
  if (body === undefined) {
    let error = 'injected_fault';
    if (status >= 500) error = 'temporarily_unavailable';
    else if (status >= 400) error = 'invalid_request';
    body = { error, error_description: `injected fault (HTTP ${status})` };
  }
  if (typeof body === 'string') {
    if (!ctx.response.get('Content-Type')) ctx.type = fault.content_type || 'text/plain';
    ctx.body = body;
  } else {
    if (!ctx.response.get('Content-Type')) ctx.type = fault.content_type || 'application/json';
    ctx.body = JSON.stringify(body);
  }
  if (status === 204 || status === 304) ctx.body = null;
  ctx.set('Cache-Control', 'no-store');
  return true;
}

// --- interactions -----------------------------------------------------------------------

async function interaction(provider, config, ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const {
    prompt: { name, details: promptDetails }, params, session, grantId,
  } = details;
  const deny = ctx.query.deny ?? (config.deny_consent ? 'consent' : undefined);
  const denyAt = deny === undefined || deny === '' || deny === '0' || deny === 'false'
    ? undefined
    : (deny === 'login' ? 'login' : 'consent');

  let result;
  if (denyAt === name) {
    result = { error: 'access_denied', error_description: 'End-User denied the authorization request' };
  } else if (name === 'login') {
    result = { login: { accountId: String(ctx.query.account || config.account_id) } };
  } else if (name === 'consent') {
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (promptDetails.missingOIDCScope) grant.addOIDCScope(promptDetails.missingOIDCScope.join(' '));
    if (promptDetails.missingOIDCClaims) grant.addOIDCClaims(promptDetails.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(promptDetails.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  } else {
    throw new Error(`unsupported prompt ${name}`);
  }
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: false,
  });
  ctx.redirect(returnTo);
  ctx.status = 303;
}

// --- protected resource -----------------------------------------------------------------

async function findAccessToken(provider, value) {
  const token = (await provider.AccessToken.find(value)) || (await provider.ClientCredentials.find(value));
  if (!token || token.isExpired) return undefined;
  if (token.grantId && !(await provider.Grant.find(token.grantId))) return undefined;
  return token;
}

async function apiItems(provider, config, ctx) {
  stats.api_requests += 1;
  const fault = takeFault('api');
  if (fault && (await applyFault(ctx, fault))) return;
  const match = /^Bearer\s+(\S+)$/i.exec(ctx.get('Authorization') || '');
  const token = match ? await findAccessToken(provider, match[1]) : undefined;
  if (!token) {
    ctx.set('WWW-Authenticate', match
      ? 'Bearer error="invalid_token", error_description="invalid or expired access token"'
      : 'Bearer');
    json(ctx, 401, { error: 'invalid_token' });
    return;
  }
  const scopes = new Set((token.scope || '').split(' ').filter(Boolean));
  if (config.api_required_scope && !scopes.has(config.api_required_scope)) {
    ctx.set('WWW-Authenticate', `Bearer error="insufficient_scope", scope="${config.api_required_scope}"`);
    json(ctx, 403, { error: 'insufficient_scope' });
    return;
  }
  json(ctx, 200, {
    items: config.items,
    client_id: token.clientId,
    account_id: token.accountId ?? null,
    scope: token.scope ?? '',
  });
}

// --- wiring -----------------------------------------------------------------------------

function testHooks(provider, config) {
  const tokenPath = provider.pathFor('token');

  return async function hooks(ctx, next) {
    if (config.log_requests) process.stderr.write(`${ctx.method} ${ctx.url}\n`);
    const { path, method } = ctx;

    if (path === tokenPath) {
      stats.token_requests += 1;
      const fault = takeFault('token');
      if (fault && (fault.close || fault.status !== undefined || fault.body !== undefined)) {
        const form = new URLSearchParams(await readRaw(ctx.req));
        bump(stats.by_grant, form.get('grant_type'));
        bump(stats.by_client, form.get('client_id'));
        await applyFault(ctx, fault);
        bump(stats.by_status, ctx.respond === false ? 'closed' : ctx.status);
        return;
      }
      if (fault) await applyFault(ctx, fault); // delay only, then the real endpoint
      try {
        await next();
      } finally {
        const params = ctx.oidc?.params || ctx.oidc?.body || {};
        bump(stats.by_grant, params.grant_type);
        bump(stats.by_client, ctx.oidc?.client?.clientId || params.client_id);
        bump(stats.by_status, ctx.status);
      }
      return;
    }

    if (path === '/__stats' && method === 'GET') return json(ctx, 200, stats);
    if (path === '/__reset' && method === 'POST') {
      stats = freshStats();
      return json(ctx, 200, stats);
    }
    if (path === '/__faults') {
      if (method === 'GET') return json(ctx, 200, faults);
      if (method === 'DELETE') {
        faults.token = [];
        faults.api = [];
        return json(ctx, 200, faults);
      }
      if (method === 'POST') {
        try {
          const body = JSON.parse((await readRaw(ctx.req)) || '{}');
          for (const key of Object.keys(body)) {
            if (!(key in faults)) throw new TypeError(`unknown fault target ${key}`);
            faults[key] = normalizeFaults(body[key]);
          }
        } catch (err) {
          return json(ctx, 400, { error: String(err.message || err) });
        }
        return json(ctx, 200, faults);
      }
    }
    if (path === '/api/items' && method === 'GET') return apiItems(provider, config, ctx);
    if (/^\/interaction\/[^/]+$/.test(path) && method === 'GET') {
      try {
        return await interaction(provider, config, ctx);
      } catch (err) {
        return json(ctx, 400, { error: 'interaction_failed', error_description: String(err.message || err) });
      }
    }
    return next();
  };
}

async function main() {
  const config = loadConfig();
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, resolve);
  });
  const { port } = server.address();
  const issuer = `http://${config.host}:${port}`;

  const provider = new Provider(issuer, {
    clients: buildClients(config),
    scopes: config.scopes,
    claims: { openid: ['sub'] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({
        sub, name: sub, email: `${sub}@example.test`, email_verified: true,
      }),
    }),
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
    },
    pkce: { required: () => true }, // oidc-provider 9 supports S256 only
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: true,
    expiresWithSession: async () => false,
    ttl: {
      AccessToken: () => config.access_token_ttl,
      ClientCredentials: () => config.client_credentials_ttl,
      RefreshToken: () => config.refresh_token_ttl,
      AuthorizationCode: () => config.authorization_code_ttl,
      IdToken: () => config.id_token_ttl,
      Interaction: () => 600,
      Session: () => 3600,
      Grant: () => config.refresh_token_ttl,
    },
    interactions: { url: (_ctx, i) => `/interaction/${i.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = 'application/json';
      ctx.body = JSON.stringify(out);
    },
  });
  provider.use(testHooks(provider, config));
  server.on('request', provider.callback());

  const stop = () => {
    server.closeAllConnections?.();
    server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  process.stdout.write(`READY ${issuer}\n`);
}

main().catch((err) => {
  process.stderr.write(`${err?.stack || err}\n`);
  process.exit(1);
});
