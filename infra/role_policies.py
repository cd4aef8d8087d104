"""The functions' IAM roles as the deployment gives them: infra/template.yaml through the pinned SAM
translator, then each role's inline policies with the intrinsic functions resolved against the
resources you name. Offline; no AWS calls.

    role_policies.py [BINDINGS.json | -]           print {"functions": {binary: role}} as JSON
    role_policies.py BINDINGS.json --resource-policies
                                                   also {"resource_policies": {logical id: document}},
                                                   the bucket and queue policies
    role_policies.py BINDINGS.json --create-users  also create one IAM user per role on the AWS endpoint
                                                   in AWS_ENDPOINT_URL (moto with IAM enforced) with
                                                   exactly the role's policies, and print their keys

BINDINGS (JSON) gives what CloudFormation would: {"parameters": {name: value}, "resources":
{logical id: {"Ref": value, "Arn": value, ...}}, "account": ..., "region": ...}; with --create-users
also "prefix" (of the user names) and "extra_users" ({name: policy document}, for tests).
A reference to a resource or attribute it does not name is an error, so a new reference in a policy
cannot pass unnoticed. Run with the SAM virtualenv's Python (./dev test does; so do the IAM tests).
"""

import json
import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

HERE = os.path.dirname(os.path.abspath(__file__))
NO_VALUE = object()


class NoManagedPolicyLookups:
    """The template names no managed policy by name; a lookup would mean it started to."""

    def load(self):
        raise RuntimeError("the SAM transform asked for managed policy names: map them here")


def transformed_template(code_uri="s3://placeholder-bucket/functions.zip", loader=None):
    """infra/template.yaml after the SAM transform (with the pinned translator)."""
    with open(os.path.join(HERE, "template.yaml")) as f:
        template = yaml_parse(f.read())
    template["Globals"]["Function"]["CodeUri"] = code_uri
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    return transform(template, {}, loader or NoManagedPolicyLookups())


class Resolver:
    def __init__(self, template, bindings):
        self.template = template
        self.params = {
            name: str(p.get("Default", "")) for name, p in template.get("Parameters", {}).items()
        }
        self.params.update(bindings.get("parameters", {}))
        for name, p in template.get("Parameters", {}).items():
            if p.get("Type") == "CommaDelimitedList":
                self.params[name] = str(self.params[name]).split(",")
        self.resources = bindings.get("resources", {})
        self.pseudo = {
            "AWS::Partition": "aws",
            "AWS::Region": bindings.get("region", "us-east-1"),
            "AWS::AccountId": bindings.get("account", "123456789012"),
            "AWS::StackName": bindings.get("stack", "lr-stack"),
            "AWS::URLSuffix": "amazonaws.com",
        }

    def ref(self, name):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        return self.attr(name, "Ref")

    def attr(self, name, attribute):
        try:
            return self.resources[name][attribute]
        except KeyError:
            raise SystemExit(f"role_policies: the bindings give no {attribute} for {name}") from None

    def condition(self, name):
        return self.truth(self.template["Conditions"][name])

    def truth(self, c):
        (fn, args), = c.items()
        if fn == "Fn::Equals":
            a, b = (self.value(x) for x in args)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not self.truth(args[0])
        if fn == "Fn::And":
            return all(self.truth(x) for x in args)
        if fn == "Fn::Or":
            return any(self.truth(x) for x in args)
        if fn == "Condition":
            return self.condition(args)
        raise SystemExit(f"role_policies: unknown condition function {fn}")

    def sub(self, text, variables):
        def one(m):
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and name.split(".", 1)[0] not in self.params:
                res, attribute = name.split(".", 1)
                return str(self.attr(res, attribute))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def value(self, v):
        if isinstance(v, list):
            out = [self.value(x) for x in v]
            return [x for x in out if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            (k, args), = v.items()
            if k == "Ref":
                return self.ref(args)
            if k == "Fn::GetAtt":
                res, attribute = args if isinstance(args, list) else args.split(".", 1)
                return self.attr(res, attribute)
            if k == "Fn::Sub":
                if isinstance(args, list):
                    text, variables = args
                    return self.sub(text, {n: self.value(x) for n, x in variables.items()})
                return self.sub(args, {})
            if k == "Fn::If":
                name, yes, no = args
                return self.value(yes if self.condition(name) else no)
            if k == "Fn::Select":
                index, items = args
                return self.value(items)[int(self.value(index))]
            if k == "Fn::Split":
                sep, text = args
                return str(self.value(text)).split(sep)
            if k == "Fn::Join":
                sep, items = args
                return sep.join(str(x) for x in self.value(items))
            if k.startswith("Fn::") or k == "Condition":
                raise SystemExit(f"role_policies: {k} is not resolved here: add it")
        out = {k: self.value(x) for k, x in v.items()}
        return {k: x for k, x in out.items() if x is not NO_VALUE}


def roles(bindings):
    """{binary: {"function", "role", "policies": [{"name", "document"}], "managed_policy_arns"}}."""
    t = transformed_template()
    r = Resolver(t, bindings)
    out = {}
    for name, res in t["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        role_ref = res["Properties"]["Role"]
        role_name = role_ref["Fn::GetAtt"][0]
        role = t["Resources"][role_name]["Properties"]
        binary = t["Resources"][name].get("Metadata", {}).get("BuildProperties", {}).get("Binary", name)
        out[binary] = {
            "function": name,
            "role": role_name,
            "policies": [
                {"name": p["PolicyName"], "document": r.value(p["PolicyDocument"])}
                for p in role.get("Policies", [])
            ],
            "managed_policy_arns": r.value(role.get("ManagedPolicyArns", [])),
        }
    return out


def resource_policies(bindings):
    """{logical id: policy document} of the bucket and queue policies, resolved."""
    t = transformed_template()
    r = Resolver(t, bindings)
    return {
        name: r.value(res["Properties"]["PolicyDocument"])
        for name, res in t["Resources"].items()
        if res["Type"] in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy")
    }


def create_users(functions, prefix, extra_users):
    """One IAM user per role, carrying exactly the role's policies (inline and managed), plus the
    extra users {name: policy document} a test asks for; returns their keys."""
    import boto3

    iam = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "us-east-1")).client(
        "iam", endpoint_url=os.environ["AWS_ENDPOINT_URL"]
    )

    def user(name, policies, managed):
        iam.create_user(UserName=name)
        for policy_name, document in policies:
            iam.put_user_policy(UserName=name, PolicyName=policy_name, PolicyDocument=json.dumps(document))
        for arn in managed:
            iam.attach_user_policy(UserName=name, PolicyArn=arn)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"user": name, "access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}

    for binary, f in functions.items():
        f.update(user(f"{prefix}-{binary}", [(p["name"], p["document"]) for p in f["policies"]], f["managed_policy_arns"]))
    return {name: user(f"{prefix}-{name}", [("policy", doc)], []) for name, doc in extra_users.items()}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    source = args[0] if args else "-"
    bindings = json.load(sys.stdin if source == "-" else open(source))
    functions = roles(bindings)
    users = {}
    if "--create-users" in argv:
        users = create_users(functions, bindings.get("prefix", "lr"), bindings.get("extra_users", {}))
    out = {"functions": functions, "users": users}
    if "--resource-policies" in argv:
        out["resource_policies"] = resource_policies(bindings)
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
