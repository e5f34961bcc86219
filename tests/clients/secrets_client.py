"""A function's use of the secret store with Python requests, configured only by the
environment (HTTP_PROXY=http://FUNCTION:TOKEN@egressd), for tests/clients.rs.

    secrets_client.py URL NEW_VALUE

Reads URL, writes NEW_VALUE with If-Match set to the ETag it read, reads again. Prints one
JSON line: {"read", "etag", "put_status", "put_etag", "reread"}.
"""

import json
import sys

import requests

url, new_value = sys.argv[1], sys.argv[2]
first = requests.get(url, timeout=10)
put = requests.put(
    url, data=new_value.encode(), headers={"If-Match": first.headers.get("ETag", "")}, timeout=10
)
again = requests.get(url, timeout=10)
print(
    json.dumps(
        {
            "read": first.text if first.ok else f"{first.status_code}: {first.text}",
            "etag": first.headers.get("ETag"),
            "put_status": put.status_code,
            "put_etag": put.headers.get("ETag"),
            "reread": again.text,
        }
    )
)
