"""Makes AWS calls with boto3 against a moto server, for the moto harness (tests/src/moto.rs).

Reads {"endpoint": URL, "region": NAME, "calls": [{"service", "operation", "params"}]} as JSON
on stdin, makes the calls in order with the credentials in the environment, and prints their
results as one JSON list. An error stops it: its code and message go to stderr, exit status 1.
boto3 comes with moto, so this runs in moto's venv and is an oracle independent of the SDK
under test.
"""

import json
import sys

import boto3
import botocore.exceptions


def main() -> int:
    request = json.load(sys.stdin)
    session = boto3.session.Session(region_name=request["region"])
    clients = {}
    results = []
    for call in request["calls"]:
        service = call["service"]
        if service not in clients:
            clients[service] = session.client(service, endpoint_url=request["endpoint"])
        try:
            result = getattr(clients[service], call["operation"])(**call.get("params", {}))
        except botocore.exceptions.ClientError as error:
            info = error.response.get("Error", {})
            print(f"{call['operation']}: {info.get('Code')}: {info.get('Message')}", file=sys.stderr)
            return 1
        result.pop("ResponseMetadata", None)
        results.append(result)
    json.dump(results, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
