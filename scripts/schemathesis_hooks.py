"""Schemathesis hooks: teach it to send `application/x-ndjson` bodies (one JSON
value per line), which the writes endpoint accepts besides JSON."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        data = value
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, list):
        data = "".join(json.dumps(item) + "\n" for item in value).encode()
    else:
        data = (json.dumps(value) + "\n").encode()
    return {"data": data}
