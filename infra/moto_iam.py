"""moto's server with IAM enforced from its first request, made to answer like AWS where the
pipeline's roles depend on it. Run with the pinned moto virtualenv's Python (./dev test does):

    moto_iam.py [--port PORT] --admin-file FILE

Before serving it creates one administrator (a user allowed everything) and writes its keys, with
the endpoint, to FILE as JSON; every request after that is checked against the caller's policies
(moto 5.2.5 checks each request's action against the Resource of the caller's identity policies:
see moto/iam/access_control.py). AWS managed policies are loaded so that SAM's
AWSLambdaSQSQueueExecutionRole and AWSLambdaBasicExecutionRole can be attached.

What moto does not do and this file adds:

- A GetObject or HeadObject of a key that does not exist answers 403 AccessDenied, not 404, unless
  the caller may s3:ListBucket the bucket with s3:prefix equal to the key (as S3 decides it:
  without ListBucket a caller cannot learn whether a key exists). moto answers 404 to anyone.
  In a bucket whose name contains "no404" a missing key answers 403 to every caller, allowed to
  list it or not: the strictest S3 the pipeline must still work with (it lists the key to tell).
- CopyObject needs s3:GetObject on the source as well as s3:PutObject on the target; moto checks
  only the target.
- ListObjects is checked against s3:prefix conditions on s3:ListBucket (moto ignores them, so a
  grant limited to one prefix would let a caller list the whole bucket).
- Secrets Manager calls are checked against the secret's ARN; moto checks them against "*", so a
  policy naming the secret (as every least-privilege policy does) could never allow them.
- KMS calls are checked against the key's ARN (an alias or key id resolved to it), and PutEvents
  against the bus's ARN; moto checks both against "*", as it does Secrets Manager's.
- A policy's Resource is matched as IAM matches it: `*` and `?` are its only wildcards, every other
  character literal. moto reads the pattern as a regular expression, so a `.` matches any
  character (`evidence/acme.*` would grant `evidence/acme-x...`, another tenant's runs).
- ListParts answers <ListPartsResult> as S3 does (moto 5.2.5 answers <ListPartsResponse>, which the
  Rust SDK refuses to parse).

The added checks evaluate Allow and Deny statements with Action/NotAction, Resource/NotResource and
the String* condition operators (IfExists too). Left as moto has it: moto itself ignores conditions
in identity policies on every other request (StringLike is not implemented and a condition on a key it has no value for
passes), evaluates no resource policies besides bucket policies (whose conditions it also ignores),
and checks no KMS permissions for SSE-KMS objects or encrypted queues.
"""

import argparse
import json
import os
import re
import sys
from urllib.parse import parse_qs, unquote, urlparse

os.environ["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"

from moto import settings  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.core.authorization import ActionAuthenticatorMixin  # noqa: E402
from moto.core.responses import ActionResult  # noqa: E402
from moto.iam.access_control import (  # noqa: E402
    CreateAccessKeyFailure,
    IAMPolicy,
    IAMPolicyStatement,
    create_access_key,
)
from moto.iam.models import iam_backends  # noqa: E402
from moto.s3.exceptions import S3AccessDeniedError  # noqa: E402
from moto.s3.responses import S3Response  # noqa: E402
from moto.secretsmanager.responses import SecretsManagerResponse  # noqa: E402
from moto.kms.responses import KmsResponse  # noqa: E402
from moto.events.responses import EventsHandler  # noqa: E402

ADMIN = "lr-test-admin"


def enforced():
    return ActionAuthenticatorMixin.request_count >= settings.INITIAL_NO_AUTH_ACTION_COUNT


def glob(pattern, value, ignore_case=False):
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, value, re.IGNORECASE if ignore_case else 0) is not None


def as_list(v):
    return v if isinstance(v, list) else [v]


def condition_holds(op, key, expected, context):
    if_exists = op.endswith("IfExists")
    base = op[: -len("IfExists")] if if_exists else op
    actual = context.get(key)
    if actual is None:
        # A missing key satisfies only negated operators and ...IfExists.
        return if_exists or base.startswith("StringNot")
    expected = [str(e) for e in as_list(expected)]
    if base == "StringEquals":
        return actual in expected
    if base == "StringNotEquals":
        return actual not in expected
    if base == "StringLike":
        return any(glob(e, actual) for e in expected)
    if base == "StringNotLike":
        return not any(glob(e, actual) for e in expected)
    return None  # an operator this file does not evaluate


def statement_applies(st, action, resource, context):
    if "Action" in st:
        if not any(glob(a, action, ignore_case=True) for a in as_list(st["Action"])):
            return False
    elif any(glob(a, action, ignore_case=True) for a in as_list(st.get("NotAction", []))):
        return False
    if "Resource" in st:
        if not any(glob(r, resource) for r in as_list(st["Resource"])):
            return False
    elif any(glob(r, resource) for r in as_list(st.get("NotResource", []))):
        return False
    for op, pairs in st.get("Condition", {}).items():
        for key, expected in pairs.items():
            holds = condition_holds(op, key, expected, context)
            if holds is None:
                # Unknown: assume the worst for the caller (an Allow does not apply, a Deny does).
                return st.get("Effect") == "Deny"
            if not holds:
                return False
    return True


def allowed(documents, action, resource, context):
    verdict = False
    for doc in documents:
        for st in as_list(doc.get("Statement", [])):
            if statement_applies(st, action, resource, context):
                if st.get("Effect") == "Deny":
                    return False
                verdict = True
    return verdict


def caller_policies(response, headers):
    auth = headers.get("Authorization", "")
    access_key_id = auth.partition("Credential=")[2].partition("/")[0]
    try:
        key = create_access_key(
            account_id=response.current_account, partition="aws", access_key_id=access_key_id, headers=headers
        )
    except CreateAccessKeyFailure:
        return []
    return [IAMPolicy(p)._policy_json for p in key.collect_policies()]


def access_denied(response):
    return response.serialized(ActionResult(S3AccessDeniedError()))


_key_response = S3Response.key_response


def key_response(self, request, full_url, headers):
    status, response_headers, body = _key_response(self, request, full_url, headers)
    if status != 404 or request.method not in ("GET", "HEAD") or not enforced():
        return status, response_headers, body
    query = parse_qs(urlparse(full_url).query, keep_blank_values=True)
    if "uploadId" in query:
        return status, response_headers, body
    bucket = self.parse_bucket_name_from_url(request, full_url)
    key = self.parse_key_name()
    try:
        self.backend.get_bucket(bucket)
    except Exception:
        return status, response_headers, body  # no such bucket: S3 says so
    if "no404" in bucket:
        return access_denied(self)
    policies = caller_policies(self, request.headers)
    if allowed(policies, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": key}):
        return status, response_headers, body
    return access_denied(self)


_key_response_put = S3Response._key_response_put


def key_response_put(self, query, key_name):
    source = self.headers.get("x-amz-copy-source")
    if source and enforced():
        source = unquote(source.split("?", 1)[0]).lstrip("/")
        policies = caller_policies(self, self.headers)
        if not allowed(policies, "s3:GetObject", f"arn:aws:s3:::{source}", {}):
            raise S3AccessDeniedError()
    return _key_response_put(self, query, key_name)


_bucket_response_get = S3Response._bucket_response_get


def bucket_response_get(self, bucket_name, querystring):
    self._set_action("BUCKET", "GET", querystring)
    if self.data.get("Action") == "ListBucket" and enforced():
        prefix = querystring.get("prefix", [None])[0]
        context = {} if prefix is None else {"s3:prefix": prefix}
        policies = caller_policies(self, self.headers)
        if not allowed(policies, "s3:ListBucket", f"arn:aws:s3:::{bucket_name}", context):
            raise S3AccessDeniedError()
    return _bucket_response_get(self, bucket_name, querystring)


_list_parts = S3Response.list_parts


def list_parts(self):
    status, headers, body = _list_parts(self)
    swap = [("<ListPartsResponse", "<ListPartsResult"), ("</ListPartsResponse>", "</ListPartsResult>")]
    for old, new in swap:
        body = body.replace(old.encode(), new.encode()) if isinstance(body, bytes) else body.replace(old, new)
    return status, headers, body


def secret_resource(self):
    secret_id = self._get_param("SecretId")
    secret = self.backend.secrets.get(secret_id) if secret_id else None
    return secret.arn if secret is not None else "*"


def kms_resource(self):
    key_id = self._get_param("KeyId")
    if not key_id:
        return "*"
    try:
        return self.kms_backend.describe_key(key_id).arn
    except Exception:
        return "*"


def events_resource(self):
    entries = self._get_param("Entries") or []
    bus = (entries[0].get("EventBusName") if entries else None) or "default"
    if bus.startswith("arn:"):
        return bus
    return f"arn:aws:events:{self.region}:{self.current_account}:event-bus/{bus}"


IAMPolicyStatement._match = staticmethod(lambda pattern, string: glob(pattern, string) or None)
S3Response.key_response = key_response
S3Response._key_response_put = key_response_put
S3Response._bucket_response_get = bucket_response_get
S3Response.list_parts = list_parts
SecretsManagerResponse._determine_resource = secret_resource
KmsResponse._determine_resource = kms_resource
EventsHandler._determine_resource = events_resource


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (the default): any free port")
    p.add_argument("--admin-file", required=True)
    args = p.parse_args()

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam.create_user(region_name="us-east-1", user_name=ADMIN)
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(ADMIN, "everything", json.dumps(everything))
    key = iam.create_access_key(ADMIN)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    admin = {
        "endpoint": f"http://{host}:{port}",
        "access_key_id": key.access_key_id,
        "secret_access_key": key.secret_access_key,
    }
    tmp = args.admin_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(admin, f)
    os.replace(tmp, args.admin_file)
    print(f"moto with IAM enforced on {admin['endpoint']}", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
