"""moto's server with DynamoDB requests serialised.

moto serves requests on threads and its DynamoDB backend takes no lock: a condition check and the
write it guards can interleave with another request, and a cancelled TransactWriteItems restores a
deep copy of the whole table taken before it ran, undoing writes other threads committed meanwhile.
Real DynamoDB makes each conditional write and each transaction atomic (serialisable). Taking one lock
around every DynamoDB request restores that guarantee, so concurrency tests exercise our code's
conditions rather than the emulator's races. Other services are served as moto_server serves them,
plus one action moto lacks: cognito-idp UpdateResourceServer (`npm run team -- client` adds a team's
scope with it), implemented on moto's own resource server model with Cognito's semantics (the name
and the whole scope list are replaced).

Usage: python moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import threading

from moto.cognitoidp.responses import CognitoIdpResponse
from moto.core.responses import ActionResult
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

_lock = threading.Lock()


def _update_resource_server(self: CognitoIdpResponse) -> ActionResult:
    server = self.backend.describe_resource_server(self._get_param("UserPoolId"), self._get_param("Identifier"))
    server.name = self._get_param("Name")
    server.scopes = self._get_param("Scopes") or []
    return ActionResult({"ResourceServer": server.to_json()})


if not hasattr(CognitoIdpResponse, "update_resource_server"):
    CognitoIdpResponse.update_resource_server = _update_resource_server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    moto_app = DomainDispatcherApplication(create_backend_app)

    def app(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with _lock:
                # Consume the response inside the lock: the backend call happens while iterating.
                return [b"".join(moto_app(environ, start_response))]
        return moto_app(environ, start_response)

    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
