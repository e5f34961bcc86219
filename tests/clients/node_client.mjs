// One GET with a Node.js client, configured only by the environment, for tests/clients.rs.
//
//     node node_client.mjs CLIENT URL      CLIENT: undici | fetch
//
// undici: undici's fetch with `setGlobalDispatcher(new EnvHttpProxyAgent())`, the documented
// way to make undici follow HTTP_PROXY / HTTPS_PROXY / NO_PROXY. fetch: Node's built-in
// fetch, which reads those variables only with NODE_USE_ENV_PROXY=1 and only from Node
// v24.0.0 / v22.21.0 on; asked for it on an older Node, the line also carries "unsupported".
//
// Prints one JSON line: {"status", "reason", "denied", "body"} when the program got a
// response, or {"error": "<Name>: <message>; cause: ..."} (the error and its cause chain, as
// console.error shows them) when fetch rejected.

const [client, url] = process.argv.slice(2);

/** Whether this Node's built-in fetch honours NODE_USE_ENV_PROXY. */
function builtinFetchReadsEnv() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  return major >= 24 || (major === 22 && minor >= 21);
}

function describe(err) {
  const parts = [];
  for (let e = err, depth = 0; e && depth < 8; e = e.cause, depth++) {
    parts.push(`${e.name}${e.code ? ` [${e.code}]` : ''}: ${e.message}`);
  }
  return parts.join('; cause: ');
}

let fetchImpl = globalThis.fetch;
const outcome = {};
if (client === 'undici') {
  const undici = await import('undici');
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
  fetchImpl = undici.fetch;
} else if (client === 'fetch') {
  if (process.env.NODE_USE_ENV_PROXY === '1' && !builtinFetchReadsEnv()) {
    outcome.unsupported = `Node ${process.version} has no NODE_USE_ENV_PROXY (needs v24.0.0 or v22.21.0)`;
  }
} else {
  throw new Error(`unknown client ${client}`);
}

try {
  const r = await fetchImpl(url, { signal: AbortSignal.timeout(10000) });
  Object.assign(outcome, {
    status: r.status,
    reason: r.statusText,
    denied: r.headers.get('x-egress-denied'),
    body: await r.text(),
  });
} catch (err) {
  outcome.error = describe(err);
}
console.log(JSON.stringify(outcome));
