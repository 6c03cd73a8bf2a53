#!/usr/bin/env python3
"""Writes patch-facts.json: upstream's strategic-merge-patch facts for every built-in type.

Input: the v1.33 definitions published as JSON schema (`_definitions.json` of the PyPI
package `kubernetes-validate`, directory `kubernetes-json-schema/v1.33.0-local`), which keep
the OpenAPI extensions `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key`.

  pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl
  python3 generate.py kubernetes_validate/kubernetes-json-schema/v1.33.0-local/_definitions.json

Output, compact: {"kinds": {"group/version/Kind": type}, "types": {type: {field:
[ref, shape, strategy, mergeKey]}}} where shape is "o" (object), "l" (list) or "m" (map of
the ref type); only fields that lead to another type or carry a strategy are kept.
"""
import json
import sys

REF = "#/$defs/"


def ref_of(schema):
    ref = schema.get("$ref")
    if ref is None and "allOf" in schema:
        ref = next((s.get("$ref") for s in schema["allOf"] if "$ref" in s), None)
    return ref[len(REF):] if ref and ref.startswith(REF) else None


def main(path):
    definitions = json.load(open(path))["$defs"]
    kinds, types = {}, {}
    for name, definition in sorted(definitions.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            key = f'{gvk["group"]}/{gvk["version"]}/{gvk["kind"]}'
            # The first definition of a kind wins (meta types list many kinds).
            kinds.setdefault(key, name)
        fields = {}
        for field, schema in sorted(definition.get("properties", {}).items()):
            strategy = schema.get("x-kubernetes-patch-strategy")
            key = schema.get("x-kubernetes-patch-merge-key")
            types_ = schema.get("type")
            is_array = types_ == "array" or (isinstance(types_, list) and "array" in types_)
            if is_array:
                ref, shape = ref_of(schema.get("items", {})), "l"
            elif isinstance(schema.get("additionalProperties"), dict):
                ref, shape = ref_of(schema["additionalProperties"]), "m"
            else:
                ref, shape = ref_of(schema), "o"
            if ref and definitions.get(ref, {}).get("properties") is None and not definitions.get(ref, {}).get(
                "x-kubernetes-group-version-kind"
            ):
                # Opaque types (Quantity, Time, IntOrString, RawExtension) merge as values.
                ref = None
            if ref is None and strategy is None:
                if is_array:
                    fields[field] = [None, "l", None, None]
                continue
            fields[field] = [ref, shape, strategy, key]
        if fields:
            types[name] = fields
    json.dump({"kinds": kinds, "types": types}, sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
