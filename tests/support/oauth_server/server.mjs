// A real OAuth 2.0 authorization server (oidc-provider) on 127.0.0.1, with a resource
// server beside it that accepts only the access tokens the authorization server issued
// and still holds. For bureau-proxy's oauth2 credential kinds (issue #18).
//
// Configuration comes as one JSON object on stdin (never argv: it holds the client secret):
//   {"client_id", "client_secret", "client_auth": "basic"|"post", "token_ttl": seconds,
//    "scopes": ["read", ...]}
// Once listening it prints one JSON line on stdout:
//   {"port", "token_url", "refresh_token"}
// refresh_token is minted for the client into the server's own store (as a finished
// authorization-code login would have), for the refresh_token grant.
//
// Routes besides oidc-provider's own (/token, /token/introspection, ...):
//   GET|POST /resource/...   200 {"client_id", "path", "method", "body_bytes", "echo"} with a
//                            valid Bearer access token, else 401 with WWW-Authenticate;
//                            "echo" is the Authorization header it was given (a server that
//                            echoes what it was sent, as some do in errors)
//   POST /control/down       the token endpoint answers 503 until /control/up
//   POST /control/up
//   POST /control/revoke     forgets every access token issued so far (the next use is 401)
//   GET  /control/stats      {"token_requests", "resource_requests"}
//   GET  /control/issued     {"access_tokens", "refresh_tokens"}: every value issued so far
//                            (opaque tokens: the value is the token's id), for tests that
//                            look for minted tokens where they must not be
import http from "node:http";
import Provider from "oidc-provider";

const input = await new Promise((resolve) => {
  let data = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => { data += chunk; });
  process.stdin.on("end", () => resolve(JSON.parse(data)));
});

const stats = { token_requests: 0, resource_requests: 0 };
let tokenEndpointDown = false;
// Every access token issued (by id), and those revoked: exactly the ones issued before a
// revoke, so that a token fetched right after it is good.
const issued = new Set();
const revoked = new Set();
const refreshTokens = new Set();

const server = http.createServer();
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;

const scopes = input.scopes ?? [];
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: input.client_id,
      client_secret: input.client_secret,
      grant_types: ["client_credentials", "refresh_token", "authorization_code"],
      redirect_uris: [`${issuer}/callback`],
      response_types: ["code"],
      token_endpoint_auth_method:
        input.client_auth === "post" ? "client_secret_post" : "client_secret_basic",
      scope: ["openid", "offline_access", ...scopes].join(" "),
    },
  ],
  scopes: ["openid", "offline_access", ...scopes],
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    devInteractions: { enabled: false },
  },
  ttl: {
    AccessToken: input.token_ttl,
    ClientCredentials: input.token_ttl,
    RefreshToken: 86400,
    Grant: 86400,
  },
  // Refresh tokens are rotated on every use, as many real servers do: the proxy must keep
  // the newest one.
  rotateRefreshToken: true,
  issueRefreshToken: async () => true,
  allowOmittingSingleRegisteredRedirectUri: true,
});
provider.proxy = false;
provider.on("access_token.saved", (token) => issued.add(token.jti));
provider.on("client_credentials.saved", (token) => issued.add(token.jti));
provider.on("refresh_token.saved", (token) => refreshTokens.add(token.jti));

async function validAccessToken(value) {
  const token =
    (await provider.ClientCredentials.find(value)) ?? (await provider.AccessToken.find(value));
  if (!token || token.isExpired || revoked.has(token.jti)) return null;
  return token;
}

function answer(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

const callback = provider.callback();
server.on("request", async (req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/control/issued") {
    answer(res, 200, { access_tokens: [...issued], refresh_tokens: [...refreshTokens] });
    return;
  }
  if (path.startsWith("/control/")) {
    if (path === "/control/down") tokenEndpointDown = true;
    else if (path === "/control/up") tokenEndpointDown = false;
    else if (path === "/control/revoke") for (const jti of issued) revoked.add(jti);
    answer(res, 200, stats);
    return;
  }
  if (path.startsWith("/resource")) {
    stats.resource_requests += 1;
    let bodyBytes = 0;
    for await (const chunk of req) bodyBytes += chunk.length;
    const header = req.headers.authorization ?? "";
    const token = header.startsWith("Bearer ") ? await validAccessToken(header.slice(7)) : null;
    if (!token) {
      answer(res, 401, { error: "invalid_token", echo: header }, {
        "www-authenticate": 'Bearer error="invalid_token"',
      });
      return;
    }
    answer(res, 200, {
      client_id: token.clientId,
      path: req.url,
      method: req.method,
      body_bytes: bodyBytes,
      echo: header,
    });
    return;
  }
  if (path === "/token") {
    stats.token_requests += 1;
    if (tokenEndpointDown) {
      answer(res, 503, { error: "temporarily_unavailable" });
      return;
    }
  }
  callback(req, res);
});

// A refresh token, as a finished authorization-code login would have left it.
const client = await provider.Client.find(input.client_id);
const grant = new provider.Grant({ accountId: "workload-owner", clientId: input.client_id });
grant.addOIDCScope(["openid", "offline_access", ...scopes].join(" "));
const grantId = await grant.save();
const refresh = new provider.RefreshToken({
  accountId: "workload-owner",
  client,
  grantId,
  gty: "authorization_code",
  scope: ["openid", "offline_access", ...scopes].join(" "),
  iiat: Math.floor(Date.now() / 1000),
  rotations: 0,
});
const refreshToken = await refresh.save();

process.stdout.write(
  JSON.stringify({ port, token_url: `${issuer}/token`, refresh_token: refreshToken }) + "\n",
);
process.on("SIGTERM", () => server.close(() => process.exit(0)));
