#!/usr/bin/env python3
"""Writes omitempty-facts.json: the fields Go's JSON encoding leaves out when empty, and
those it always writes.

Upstream decodes every request into Go structs and encodes them again, so a field tagged
`omitempty` that is not a pointer disappears when it holds its zero value (false, 0, "",
an empty list or map), while a pointer field keeps an explicit zero (`replicas: 0`) and a
struct field is never left out. Fields without `omitempty` and plain struct fields are
always written, even in a kind's zero value: which is what upstream's managedFields
compare a created object against (a node missing there gets a `.` member). Neither the
OpenAPI schemas nor the protobuf definitions say which fields are pointers; the Go types
do.

Inputs: upstream's `types.go` files (v1.33), found under the directory given, as laid out
in the kubernetes repository (`staging/src/k8s.io/api/<group>/<version>/types.go`,
`staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go`, apiextensions-apiserver and
kube-aggregator likewise), and `openapi-schemas.json` beside this script, which says
where each field leads.

  python3 generate-omitempty.py ~/kubernetes/staging/src > omitempty-facts.json

Output: {type: {field: [flags, child, shape, default?]}} where flags has bit 1 when the
field is left out empty and bit 2 when it is always written, child is the type the field
leads to (or null), shape "o" (object), "l" (list of) or "m" (map of), and default the
field's `+default=` marker when it has one (server-side apply keys list items by it where
a key field is missing, as structured-merge-diff does); only types the Go sources
describe, and fields with a flag, a child among them or a default, are kept.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REF = "#/components/schemas/"
SCALARS = {"bool", "string", "byte", "rune", "int", "int8", "int16", "int32", "int64",
           "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64"}
# Types from packages whose sources are not read: all strings.
KNOWN = {"types.UID": "string", "types.NodeName": "string"}


def definition_prefix(go_path):
    """`k8s.io/api/apps/v1` -> `io.k8s.api.apps.v1`, as upstream names definitions."""
    parts = go_path.split("/")
    if parts[0] != "k8s.io":
        return None
    return "io.k8s." + ".".join(parts[1:])


class Package:
    def __init__(self, go_path):
        self.go_path = go_path
        self.imports = {}
        self.aliases = {}
        self.structs = {}


def parse(go_path, text, package):
    for alias, path in re.findall(r'^\s*(\w+)?\s*"(k8s\.io/[^"]+)"\s*$', text, re.M):
        package.imports[alias or path.rsplit("/", 1)[1]] = path
    for name, underlying in re.findall(r"^type (\w+) ([^\s{]+)\s*$", text, re.M):
        package.aliases[name] = underlying
    for name, body in re.findall(r"^type (\w+) struct \{\n(.*?)^\}", text, re.M | re.S):
        fields = []
        default = None
        for line in body.splitlines():
            line = line.strip()
            marker = re.match(r"^// \+default=(.*)$", line)
            if marker:
                default = json.loads(marker.group(1))
                continue
            if not line or line.startswith("//"):
                continue
            m = re.match(r'^(?:(\w+)\s+)?(\S+)\s+`.*?json:"([^"]*)"', line)
            if not m:
                continue
            field, ty, tag = m.groups()
            json_name, *options = tag.split(",")
            if json_name == "-":
                continue
            # An embedded struct is inline unless its tag names it (`metav1.ObjectMeta` is
            # the field `metadata`).
            inline = "inline" in options or (field is None and json_name == "")
            fields.append((json_name, ty, "omitempty" in options, inline, default))
            default = None
        package.structs[name] = fields


def load(root):
    packages = {}
    for directory, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".go") or file.endswith("_test.go") or file.startswith("zz_"):
                continue
            path = os.path.join(directory, file)
            rel = os.path.relpath(directory, root)
            go_path = rel.replace(os.sep, "/")
            package = packages.setdefault(go_path, Package(go_path))
            parse(go_path, open(path).read(), package)
    return packages


def resolve(packages, package, ty):
    """(package, name) of a possibly qualified type name."""
    if "." in ty:
        alias, name = ty.split(".", 1)
        path = package.imports.get(alias)
        return packages.get(path), name
    return package, ty


def kind(packages, package, ty, depth=0):
    """pointer, slice, map, scalar or struct: what omitempty sees."""
    if ty.startswith("*"):
        return "pointer"
    if ty.startswith("[]"):
        return "slice"
    if ty.startswith("map["):
        return "map"
    if ty in SCALARS:
        return "scalar"
    if ty in KNOWN:
        return kind(packages, package, KNOWN[ty], depth + 1)
    owner, name = resolve(packages, package, ty)
    if owner is None or depth > 8:
        return "struct"
    if name in owner.aliases:
        return kind(packages, owner, owner.aliases[name], depth + 1)
    return "struct"


def struct_fields(packages, package, name, depth=0):
    """The JSON fields of a struct, embedded (inline) structs' fields included."""
    out = {}
    for json_name, ty, omitempty, inline, default in package.structs.get(name, []):
        if inline:
            owner, inner = resolve(packages, package, ty.lstrip("*"))
            if owner is not None and depth < 8:
                out.update(struct_fields(packages, owner, inner, depth + 1))
            continue
        go_kind = kind(packages, package, ty)
        omit = omitempty and go_kind in ("scalar", "slice", "map")
        always = not omitempty or go_kind == "struct"
        out[json_name] = ((1 if omit else 0) | (2 if always else 0), default)
    return out


def ref(schema):
    if "$ref" in schema:
        return schema["$ref"]
    for inner in schema.get("allOf", []):
        if "$ref" in inner:
            return inner["$ref"]
    return None


def child(schema):
    """The type a property leads to, and how."""
    for shape, inner in (("o", schema), ("l", schema.get("items") or {}),
                         ("m", schema.get("additionalProperties") or {})):
        if isinstance(inner, dict):
            r = ref(inner)
            if r and r.startswith(REF):
                return r[len(REF):], shape
    return None, None


def main(root):
    packages = load(root)
    omitted = {}
    for package in packages.values():
        prefix = definition_prefix(package.go_path)
        if prefix is None:
            continue
        for name in package.structs:
            omitted[f"{prefix}.{name}"] = struct_fields(packages, package, name)
    schemas = json.load(open(os.path.join(HERE, "openapi-schemas.json")))
    known = {name for name in schemas if name in omitted}
    out = {}
    for name in sorted(known):
        fields = {}
        for prop, prop_schema in sorted((schemas[name].get("properties") or {}).items()):
            target, shape = child(prop_schema)
            flags, default = omitted[name].get(prop, (0, None))
            if target not in known:
                target, shape = None, None
            if flags or target or default is not None:
                fields[prop] = [flags, target, shape] + ([default] if default is not None else [])
        out[name] = fields
    json.dump(out, sys.stdout, separators=(",", ":"), sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
