// A function's use of the secret store from Node.js (undici with EnvHttpProxyAgent, the
// documented way to follow HTTP_PROXY), configured only by the environment, for
// tests/clients.rs.
//
//     node secrets_client.mjs URL NEW_VALUE
//
// Reads URL, writes NEW_VALUE with If-Match set to the ETag it read, reads again. Prints
// one JSON line: {"read", "etag", "put_status", "put_etag", "reread"}.

import { EnvHttpProxyAgent, fetch, setGlobalDispatcher } from 'undici';

const [url, newValue] = process.argv.slice(2);
setGlobalDispatcher(new EnvHttpProxyAgent());
const timeout = () => AbortSignal.timeout(10000);

const first = await fetch(url, { signal: timeout() });
const read = await first.text();
const put = await fetch(url, {
  method: 'PUT',
  body: newValue,
  headers: { 'If-Match': first.headers.get('etag') ?? '' },
  signal: timeout(),
});
await put.text();
const again = await fetch(url, { signal: timeout() });
console.log(JSON.stringify({
  read: first.ok ? read : `${first.status}: ${read}`,
  etag: first.headers.get('etag'),
  put_status: put.status,
  put_etag: put.headers.get('etag'),
  reread: await again.text(),
}));
