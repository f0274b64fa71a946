#!/usr/bin/env python3
"""Extracts the request/response schemas the fake forge validates against from the official
schema subsets in the shared fixture set, into one self-contained JSON document per forge.

Usage (from the repository root, with the shared fixture set at $FIXTURES, default
/work/shared/fixtures/forges):

    python3 fakeforge/schemas/extract.py [FIXTURES]

Output: fakeforge/schemas/github.json and fakeforge/schemas/gitea.json, each of the form

    {"source": ..., "operations": {"METHOD /path/template": {"request": S|null,
      "responses": {"200": S|null, ...}}}, "definitions": {...}, "examples": {...}}

Schema nodes are copied unchanged except for these mechanical rewrites, needed because the
inputs are OpenAPI 3.0 / Swagger 2.0 dialects and not plain JSON Schema:
  1. every `$ref` to `#/components/schemas/X` (OpenAPI) or `#/definitions/X` (Swagger) becomes
     `#/definitions/X`; `$ref`s to `#/components/responses/X` / `#/responses/X` are replaced by
     the response's JSON schema (or null when it has none);
  2. OpenAPI 3.0 `nullable: true` becomes JSON Schema: `"type": T` -> `"type": [T, "null"]`
     (and `null` added to an `enum`), or, without a `type`, the node is wrapped as
     `{"anyOf": [{"type": "null"}, node]}`; the `nullable` key is dropped.
Only the operations in GITHUB_OPS / GITEA_OPS (those reconix's clients call) and the
definitions reachable from them are written. `examples` (GitHub only) are
the OpenAPI `components.examples` values, verbatim; the fake uses them as response templates.
"""
import copy
import json
import os
import sys

FIXTURES = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/fixtures/forges"
HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("get", "post", "put", "patch", "delete")

GITHUB_SRC = "github/rest/api.github.com.2022-06-11.subset.openapi.json"
GITEA_SRC = "gitea/rest/gitea-v1.26.3.swagger.subset.json"

# The operations reconix's clients call (forge/src/repos_api.rs, forge/src/github/client.rs,
# forge/src/gitea/client.rs), in the schema's own path-template spelling.
GITHUB_OPS = [
    "GET /repos/{owner}/{repo}",
    "GET /repos/{owner}/{repo}/hooks",
    "POST /repos/{owner}/{repo}/hooks",
    "GET /repos/{owner}/{repo}/hooks/{hook_id}",
    "PATCH /repos/{owner}/{repo}/hooks/{hook_id}",
    "DELETE /repos/{owner}/{repo}/hooks/{hook_id}",
    "POST /repos/{owner}/{repo}/statuses/{sha}",
    "POST /repos/{owner}/{repo}/check-runs",
    "GET /repos/{owner}/{repo}/check-runs/{check_run_id}",
    "PATCH /repos/{owner}/{repo}/check-runs/{check_run_id}",
    "GET /repos/{owner}/{repo}/collaborators/{username}/permission",
    "GET /repos/{owner}/{repo}/branches",
    "GET /repos/{owner}/{repo}/pulls",
]
GITEA_OPS = [
    "GET /repos/{owner}/{repo}",
    "GET /repos/{owner}/{repo}/hooks",
    "POST /repos/{owner}/{repo}/hooks",
    "GET /repos/{owner}/{repo}/hooks/{id}",
    "PATCH /repos/{owner}/{repo}/hooks/{id}",
    "DELETE /repos/{owner}/{repo}/hooks/{id}",
    "POST /repos/{owner}/{repo}/statuses/{sha}",
    "GET /repos/{owner}/{repo}/collaborators/{collaborator}/permission",
    "GET /repos/{owner}/{repo}/branches",
    "GET /repos/{owner}/{repo}/pulls",
]

GITHUB_EXAMPLES = [
    "hook", "hook-items", "status", "check-run", "pull-request-simple-items",
    "short-branch-with-protection-items",
    "repository-collaborator-permission-response-if-user-has-admin-permissions",
    "full-repository-default-response",
]


def fix_nullable(node):
    if isinstance(node, list):
        return [fix_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: fix_nullable(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = node["enum"] + [None]
        else:
            return {"anyOf": [{"type": "null"}, node]}
    return node


class Extractor:
    def __init__(self, doc, keep, schema_prefix, response_prefix, responses, schemas):
        self.doc = doc
        self.keep = keep
        self.schema_prefix = schema_prefix
        self.response_prefix = response_prefix
        self.responses = responses
        self.schemas = schemas
        self.used = set()

    def response_schema(self, response):
        if "$ref" in response:
            name = response["$ref"][len(self.response_prefix):]
            response = self.responses[name]
        if "content" in response:  # OpenAPI 3
            media = response["content"].get("application/json")
            schema = media.get("schema") if media else None
        else:  # Swagger 2
            schema = response.get("schema")
        return None if schema is None else self.rewrite(schema)

    def rewrite(self, node):
        if isinstance(node, list):
            return [self.rewrite(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                assert value.startswith(self.schema_prefix), value
                name = value[len(self.schema_prefix):]
                if name not in self.used:
                    self.used.add(name)
                    self.definitions[name] = None
                    self.definitions[name] = self.rewrite(self.schemas[name])
                out[key] = "#/definitions/" + name
            else:
                out[key] = self.rewrite(value)
        return out

    def run(self):
        self.definitions = {}
        operations = {}
        for path, item in self.doc["paths"].items():
            for method in METHODS:
                op = item.get(method)
                if op is None or f"{method.upper()} {path}" not in self.keep:
                    continue
                request = None
                if "requestBody" in op:
                    media = op["requestBody"]["content"].get("application/json")
                    request = self.rewrite(media["schema"])
                for param in op.get("parameters", []):
                    if param.get("in") == "body":
                        request = self.rewrite(param["schema"])
                responses = {
                    code: self.response_schema(resp)
                    for code, resp in op.get("responses", {}).items()
                }
                operations[f"{method.upper()} {path}"] = {
                    "request": request,
                    "responses": responses,
                }
        missing = set(self.keep) - set(operations)
        assert not missing, missing
        return operations


def write(name, source, operations, definitions, examples=None):
    out = {
        "source": source,
        "generated_by": "fakeforge/schemas/extract.py (see PROVENANCE.md)",
        "operations": fix_nullable(operations),
        "definitions": fix_nullable(dict(sorted(definitions.items()))),
    }
    if examples is not None:
        out["examples"] = examples
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")


def github():
    doc = json.load(open(os.path.join(FIXTURES, GITHUB_SRC)))
    c = doc["components"]
    ex = Extractor(doc, GITHUB_OPS, "#/components/schemas/", "#/components/responses/",
                   c["responses"], c["schemas"])
    ops = ex.run()
    examples = {n: copy.deepcopy(c["examples"][n]["value"]) for n in GITHUB_EXAMPLES}
    write("github.json", GITHUB_SRC, ops, ex.definitions, examples)


def gitea():
    doc = json.load(open(os.path.join(FIXTURES, GITEA_SRC)))
    ex = Extractor(doc, GITEA_OPS, "#/definitions/", "#/responses/", doc["responses"], doc["definitions"])
    ops = ex.run()
    write("gitea.json", GITEA_SRC, ops, ex.definitions)


if __name__ == "__main__":
    github()
    gitea()
