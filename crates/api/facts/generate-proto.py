#!/usr/bin/env python3
"""Writes proto-facts.json: how upstream's protobuf messages map to their JSON form.

Inputs: the generated Rust of the crate k8s-pb 0.9.0 (its `src/`, which keeps every
message's field numbers and wire types from upstream's generated.proto files) and the v1.33
definitions of `kubernetes-validate` (see generate.py), which give each field's JSON name.

  python3 generate-proto.py ~/.cargo/registry/src/*/k8s-pb-0.9.0/src \\
      kubernetes_validate/kubernetes-json-schema/v1.33.0-local/_definitions.json

Output: {type: {tag: [jsonName, kind, repeated, ref]}} where kind is string, int32, int64,
bool, bytes, double, message or map:<value kind>, and ref the message type of a message (or
map value). An empty jsonName marks an embedded struct, whose fields are inlined.
"""
import json
import os
import re
import sys

PREFIXES = {
    "api": "io.k8s.api",
    "apimachinery": "io.k8s.apimachinery",
    "apiextensions_apiserver": "io.k8s.apiextensions-apiserver",
    "kube_aggregator": "io.k8s.kube-aggregator",
    "metrics": "io.k8s.metrics",
}


def definition_name(module):
    head, rest = module[0], module[1:]
    return ".".join([PREFIXES.get(head, head)] + rest)


def resolve(type_text, module):
    """The definition name of a Rust type path seen from `module`."""
    path = [p for p in re.sub(r"\s", "", type_text).split("::") if p]
    up = 0
    while path and path[0] == "super":
        up += 1
        path = path[1:]
    base = module[: len(module) - up] if up else module
    if len(path) == 1:
        return definition_name(base) + "." + path[0]
    return definition_name(base + path[:-1]) + "." + path[-1]


def message_type(type_text):
    """The innermost non-container type of a field's Rust type."""
    text = re.sub(r"\s", "", type_text)
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while text.startswith(wrapper):
            text = text[len(wrapper) : -1]
    if text.startswith("::prost::alloc::collections::BTreeMap<"):
        text = text[len("::prost::alloc::collections::BTreeMap<") : -1]
        text = text.split(",", 1)[1].rstrip(",")
    return text


def normalized(name):
    return name.replace("_", "").lower()


# prost renames types (AWSElasticBlockStoreVolumeSource becomes AwsElasticBlockStoreVolumeSource):
# upstream's name is found again by comparing without case.
REAL_NAMES = {}


def real(name):
    return REAL_NAMES.get(normalized(name), name)


def main(source, definitions_path):
    definitions = json.load(open(definitions_path))["$defs"]
    REAL_NAMES.update({normalized(k): k for k in definitions})
    types = {}
    for root, _, files in os.walk(source):
        if "mod.rs" not in files:
            continue
        module = os.path.relpath(root, source).split(os.sep)
        if module == ["."]:
            continue
        text = open(os.path.join(root, "mod.rs")).read()
        for struct in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            name = real(definition_name(module) + "." + struct.group(1))
            json_names = {normalized(k): k for k in definitions.get(name, {}).get("properties", {})}
            fields = {}
            body = struct.group(2)
            for field in re.finditer(r"#\[prost\((.*?)\)\]\s*pub (r#)?(\w+):", body, re.S):
                attribute, rust_name = field.group(1), field.group(3)
                rust_type, depth = "", 0
                for ch in body[field.end():]:
                    if ch == "," and depth == 0:
                        break
                    depth += {"<": 1, ">": -1}.get(ch, 0)
                    rust_type += ch
                tag = re.search(r'tag = "(\d+)"', attribute).group(1)
                kind = attribute.split(",")[0].strip()
                repeated = "repeated" in attribute
                ref = None
                if kind.startswith("btree_map"):
                    value = re.search(r'btree_map = "string, (\w+)"', attribute).group(1)
                    kind = "map:" + value
                    if value == "message":
                        ref = real(resolve(message_type(rust_type), module))
                elif kind.startswith("bytes"):
                    kind = "bytes"
                elif kind == "message":
                    ref = real(resolve(message_type(rust_type), module))
                json_name = json_names.get(normalized(rust_name))
                if json_name is None and name in definitions and kind == "message" and not repeated:
                    # An embedded Go struct (`json:",inline"`): its fields are the parent's.
                    json_name = ""
                if json_name is None:
                    head, *rest = rust_name.split("_")
                    json_name = head + "".join(p.capitalize() for p in rest)
                fields[tag] = [json_name, kind, repeated, ref]
            types[name] = fields
    json.dump(types, sys.stdout, separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
