"""moto_server (same arguments), checking signatures against the request body as it arrived.

moto 5.2.5 checks a signature by rebuilding the request from what it parsed
(`data=self._body or self._data`), not from the bytes received:
- a request with no body (EBS's ListSnapshotBlocks, GetSnapshotBlock, CompleteSnapshot) is
  rebuilt with the parsed parameters as its body, so the payload hash is wrong and every such
  call is refused as SignatureDoesNotMatch, whoever signs it (boto3 too);
- an EC2 form post is rebuilt by re-encoding its parameters, with a space as `+`: the Rust SDK
  sends `%20`, so any call with a space in a value (RegisterImage's description) is refused as
  AuthFailure.
Here a WSGI middleware keeps each request's body and the check hashes that; everything else is
moto's own. Used by tests/src/moto.rs.
"""

import io
import threading

import moto.server
from moto.iam.access_control import IAMRequestBase
from werkzeug.serving import run_simple

_received = threading.local()


class KeepBody:
    """Reads the body before moto does and puts it back for moto to read."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        stream = environ["wsgi.input"]
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug ends the stream itself
            body = stream.read()
        else:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = stream.read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        # werkzeug's threaded server runs each request on a thread of its own, start to end.
        _received.body = body
        return self.app(environ, start_response)


_rebuild = IAMRequestBase._create_aws_request


def _create_aws_request(self):
    request = _rebuild(self)
    request.data = getattr(_received, "body", b"")
    return request


IAMRequestBase._create_aws_request = _create_aws_request
moto.server.run_simple = lambda host, port, app, **options: run_simple(host, port, KeepBody(app), **options)

if __name__ == "__main__":
    moto.server.main()
