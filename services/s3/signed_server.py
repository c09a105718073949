"""moto's server for services.sh --secure: checks request signatures on the
URL as the client signed it.

moto checks a SigV4 signature against the *decoded* request URL, so every
request whose key or query has a character the client percent-encodes
(``=``, ``:``, ``/`` in a prefix: all archive paths) fails with
SignatureDoesNotMatch although it is signed correctly. This wrapper hands
moto's check the raw request URI the server received instead; everything
else is ``python -m moto.server`` unchanged (same arguments).
"""
import sys
from urllib.parse import urlsplit, urlunsplit

from moto.core import authorization, responses
from moto.server import main

_setup_class = responses.BaseResponse.setup_class
_authenticate = authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action


def setup_class(self, request, full_url, headers, use_raw_body=False):
    environ = getattr(request, "environ", None) or {}
    self._raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    return _setup_class(self, request, full_url, headers, use_raw_body)


def authenticate(self, iam_request_cls, resource="*"):
    raw = getattr(self, "_raw_uri", None)
    if not raw:
        return _authenticate(self, iam_request_cls, resource)
    decoded = self.uri
    parts, raw_parts = urlsplit(decoded), urlsplit(raw)
    self.uri = urlunsplit((parts.scheme, parts.netloc, raw_parts.path, raw_parts.query, ""))
    try:
        return _authenticate(self, iam_request_cls, resource)
    finally:
        self.uri = decoded


responses.BaseResponse.setup_class = setup_class
authorization.ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
