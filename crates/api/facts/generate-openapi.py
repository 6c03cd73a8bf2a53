#!/usr/bin/env python3
"""Writes openapi-schemas.json: upstream's v1.33 OpenAPI v3 component schemas.

Input: the `_definitions.json` of kubernetes-validate (see generate.py), a JSON-schema
rendering of upstream's OpenAPI. This undoes that rendering's changes so the schemas read
as upstream publishes them under /openapi/v3: `#/components/schemas/` references (wrapped
in allOf where they carry siblings), single types instead of [type, "null"], no enums on
apiVersion and kind, and upstream's forms of IntOrString and Quantity.

  python3 generate-openapi.py kubernetes_validate/kubernetes-json-schema/v1.33.0-local/_definitions.json
"""
import json
import sys

FROM, TO = "#/$defs/", "#/components/schemas/"
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"type": "string"},
}


def convert(node, in_properties=False):
    if isinstance(node, list):
        return [convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "$ref":
            out[key] = TO + value[len(FROM):] if value.startswith(FROM) else value
        elif key == "type" and isinstance(value, list):
            kinds = [t for t in value if t != "null"]
            out[key] = kinds[0] if len(kinds) == 1 else kinds
        elif key == "properties":
            out[key] = {name: convert(schema, True) for name, schema in value.items()}
            for name in ("apiVersion", "kind"):
                out[key].get(name, {}).pop("enum", None)
        else:
            out[key] = convert(value)
    if "$ref" in out and len(out) > 1:
        ref = out.pop("$ref")
        out["allOf"] = [{"$ref": ref}]
    return out


def main(path):
    definitions = json.load(open(path))["$defs"]
    schemas = {}
    for name, definition in sorted(definitions.items()):
        schema = convert(definition)
        if name in SPECIAL:
            schema = {"description": definition.get("description", ""), **SPECIAL[name]}
        schemas[name] = schema
    json.dump(schemas, sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
