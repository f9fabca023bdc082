"""Calls rotor's server API once with the official `cent` client and prints the result as a
JSON line. Environment: API_URL, API_KEY, METHOD (e.g. publish), REQUEST (JSON object)."""
import json
import os
import sys

import cent


def request_class(method):
    return getattr(cent, "".join(p.capitalize() for p in method.split("_")) + "Request")


def main():
    method = os.environ["METHOD"]
    params = json.loads(os.environ.get("REQUEST", "{}"))
    if method == "batch":
        # cent takes typed requests and writes them as {"commands": [{"<method>": {...}}]}.
        params["requests"] = [request_class(m)(**p) for cmd in params.pop("commands") for m, p in cmd.items()]
    request = request_class(method)(**params)
    client = cent.Client(os.environ["API_URL"], os.environ["API_KEY"], timeout=5)
    try:
        result = getattr(client, method)(request)
        if method == "batch":
            # Replies are typed per command; dump each with its own type.
            dumped = {"replies": [r.model_dump(exclude_none=True) for r in result.replies]}
        else:
            dumped = result.model_dump(exclude_none=True) if result is not None else None
        print(json.dumps({"event": "result", "result": dumped}), flush=True)
    except cent.CentError as e:
        print(json.dumps({"event": "result", "result": {"error_type": type(e).__name__, "error": str(e), "code": getattr(e, "code", None)}}), flush=True)
    finally:
        client.close()


main()
