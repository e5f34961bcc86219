"""One GET with one Python HTTP library, configured only by the environment, for
tests/clients.rs.

    py_client.py LIBRARY URL      LIBRARY: urllib | requests | httpx | aiohttp | aiohttp-default

Prints one JSON line: {"status", "reason", "denied", "body"} when the program got a response
(whatever its status), or {"error": "<module.Type>: <message>"} when the library raised instead,
as the last line of a traceback would show it. "aiohttp-default" is aiohttp without
trust_env=True, the way most code creates a session.
"""

import asyncio
import json
import sys

TIMEOUT = 10


def response(status, reason, headers, body):
    return {
        "status": status,
        "reason": reason,
        "denied": headers.get("x-egress-denied"),
        "body": body,
    }


def get_urllib(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            return response(r.status, r.reason, r.headers, r.read().decode())
    except urllib.error.HTTPError as e:
        # urllib raises for 4xx/5xx; the response is on the exception.
        return response(e.code, e.reason, e.headers, e.read().decode())


def get_requests(url):
    import requests

    r = requests.get(url, timeout=TIMEOUT)
    return response(r.status_code, r.reason, r.headers, r.text)


def get_httpx(url):
    import httpx

    r = httpx.get(url, timeout=TIMEOUT)
    return response(r.status_code, r.reason_phrase, r.headers, r.text)


def get_aiohttp(url, trust_env):
    import aiohttp

    async def get():
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(trust_env=trust_env, timeout=timeout) as s:
            async with s.get(url) as r:
                return response(r.status, r.reason, r.headers, await r.text())

    return asyncio.run(get())


def main():
    library, url = sys.argv[1], sys.argv[2]
    get = {
        "urllib": get_urllib,
        "requests": get_requests,
        "httpx": get_httpx,
        "aiohttp": lambda u: get_aiohttp(u, trust_env=True),
        "aiohttp-default": lambda u: get_aiohttp(u, trust_env=False),
    }[library]
    try:
        outcome = get(url)
    except Exception as e:  # what the program would see: the exception, as a traceback ends
        outcome = {"error": f"{type(e).__module__}.{type(e).__qualname__}: {e}"}
    print(json.dumps(outcome))


main()
