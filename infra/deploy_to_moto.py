"""Deploys infra/template.yaml into moto's CloudFormation after the SAM transform, then checks
what it created: the queues with their redrive policies and the bucket with its encryption.

Run by `./dev test` with the pinned SAM virtualenv's Python, against the moto it started
(AWS_ENDPOINT_URL). `sam package` would upload the code; here a placeholder zip stands in for it.
"""

import io
import json
import os
import sys
import time
import uuid
import zipfile

import boto3
from samtranslator.public.translator import ManagedPolicyLoader

sys.dont_write_bytecode = True  # no __pycache__ in infra/ for the import below
from role_policies import transformed_template  # noqa: E402  (the same transform the IAM tests use)

endpoint = os.environ["AWS_ENDPOINT_URL"]
session = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1"))
client = lambda name: session.client(name, endpoint_url=endpoint)

s3, cfn, sqs = client("s3"), client("cloudformation"), client("sqs")
code_bucket = "lr-code-" + uuid.uuid4().hex[:8]
s3.create_bucket(Bucket=code_bucket)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr("bootstrap", "#!/bin/sh\necho placeholder\n")
s3.put_object(Bucket=code_bucket, Key="functions.zip", Body=buf.getvalue())

os.environ.setdefault("AWS_DEFAULT_REGION", session.region_name)
transformed = transformed_template(f"s3://{code_bucket}/functions.zip", ManagedPolicyLoader(client("iam")))

stack = "lr-infra-" + uuid.uuid4().hex[:8]
cfn.create_stack(StackName=stack, TemplateBody=json.dumps(transformed), Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"])
for _ in range(120):
    status = cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    if not status.endswith("IN_PROGRESS"):
        break
    time.sleep(0.5)
print(f"stack {stack}: {status}")
if status != "CREATE_COMPLETE":
    for e in cfn.describe_stack_events(StackName=stack)["StackEvents"][:10]:
        print(" ", e.get("LogicalResourceId"), e.get("ResourceStatus"), e.get("ResourceStatusReason"))
    sys.exit(1)

resources = {
    r["LogicalResourceId"]: r
    for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack)
    for r in page["StackResourceSummaries"]
}
print(f"{len(resources)} resources: " + ", ".join(sorted(k for k in resources if k)))
failures = []
for stage in ["Alerts", "Submit", "Poll", "Collect"]:
    url = resources[f"{stage}Queue"]["PhysicalResourceId"]
    dlq_url = resources[f"{stage}DeadLetterQueue"]["PhysicalResourceId"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.loads(attrs.get("RedrivePolicy", "{}"))
    ok = redrive.get("deadLetterTargetArn") == dlq_arn and int(redrive.get("maxReceiveCount", 0)) == 5
    print(f"queue {stage:<8} visibility {attrs['VisibilityTimeout']:>5}s  redrive → {dlq_arn.rsplit(':', 1)[-1]} after {redrive.get('maxReceiveCount')} receives  {'ok' if ok else 'WRONG'}")
    if not ok:
        failures.append(f"{stage} queue redrive {redrive}")

bucket = resources["EvidenceBucket"]["PhysicalResourceId"]
rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
sse = rule["ApplyServerSideEncryptionByDefault"]
key_ok = sse["SSEAlgorithm"] == "aws:kms" and bool(sse.get("KMSMasterKeyID"))
print(f"bucket {bucket}: {sse['SSEAlgorithm']} with key {sse.get('KMSMasterKeyID')}  {'ok' if key_ok else 'WRONG'}")
if not key_ok:
    failures.append(f"bucket encryption {sse}")
# moto's CloudFormation does not apply PublicAccessBlockConfiguration (cfn-lint, checkov and the
# consistency test cover it); the bucket's encryption and the queues are what it does model.
outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])}
print(f"outputs: {sorted(outputs)}")
# lrctl --stack reads these.
for name in ["AlertsQueueUrl", "AlertsQueueArn", "EvidenceBucketName", "SigningKeyArn", "EventBusName",
             "SubmitQueueUrl", "PollQueueUrl", "CollectQueueUrl", "AlertsDeadLetterQueueUrl",
             "SubmitDeadLetterQueueUrl", "PollDeadLetterQueueUrl", "CollectDeadLetterQueueUrl"]:
    if name not in outputs:
        failures.append(f"missing output {name}")
# (moto cannot describe a key CloudFormation made with a key policy, so the signing key's spec is
# checked by cfn-lint and by the local stack, which makes the same key through the SDK.)
if failures:
    print("FAILED: " + "; ".join(failures))
    sys.exit(1)
print("template deployed to moto: 4 queues with DLQ redrive, SSE-KMS bucket, outputs present")
