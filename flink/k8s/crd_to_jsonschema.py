"""Turns CustomResourceDefinitions into JSON schemas kubeconform can validate against.

    python flink/k8s/crd_to_jsonschema.py OUT_DIR CRD.yaml...

writes ``OUT_DIR/<group>/<kind>_<version>.json`` (kind in lower case) for
every served version of every CRD, matching the schema location
``{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json`` that
``flink/k8s/validate.sh`` passes to kubeconform.

A CRD's ``openAPIV3Schema`` is OpenAPI, not quite JSON Schema. The changes:

- strict objects: an object that lists ``properties`` gets
  ``additionalProperties: false`` unless it says
  ``x-kubernetes-preserve-unknown-fields``, so a misspelt field fails
  validation (the API server prunes unknown fields silently, which is how a
  typo in a manifest goes unnoticed);
- ``x-kubernetes-int-or-string`` becomes "integer or string";
- ``nullable: true`` also admits ``null``.
"""
from __future__ import annotations

import json
import pathlib
import sys
import typing

import yaml

__all__ = ["crd_to_jsonschemas", "openapi_to_jsonschema"]

_SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def openapi_to_jsonschema(node: typing.Any) -> typing.Any:
    """A strict JSON schema for one OpenAPI v3 schema node (recursive, returns a copy)."""
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {name: openapi_to_jsonschema(sub) for name, sub in out["properties"].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = openapi_to_jsonschema(out["additionalProperties"])
    if "items" in out:
        out["items"] = openapi_to_jsonschema(out["items"])
    if "not" in out:
        out["not"] = openapi_to_jsonschema(out["not"])
    for key in _SUBSCHEMA_LISTS:
        if key in out:
            out[key] = [openapi_to_jsonschema(sub) for sub in out[key]]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def crd_to_jsonschemas(crd: typing.Mapping[str, typing.Any]) -> typing.Dict[str, dict]:
    """``{"<group>/<kind>_<version>.json": schema}`` for a CRD (apiextensions.k8s.io/v1)."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: {crd.get('kind')!r}")
    spec = crd["spec"]
    group = spec["group"]
    kind = spec["names"]["kind"]
    schemas = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
        # kubeconform checks apiVersion/kind itself; pin them here too so the
        # schema is also correct on its own.
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        properties["kind"] = {"type": "string", "enum": [kind]}
        # CRDs leave ObjectMeta out of openAPIV3Schema (the API server checks
        # it); strict top level would otherwise reject every metadata block.
        properties.setdefault("metadata", {"type": "object"})
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schemas[f"{group}/{kind.lower()}_{version['name']}.json"] = schema
    return schemas


def main(argv: typing.Sequence[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = pathlib.Path(argv[0])
    for path in argv[1:]:
        for document in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not document:
                continue
            for relative, schema in crd_to_jsonschemas(document).items():
                target = out_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, indent=1, sort_keys=True))
                print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
