"""The vendors' published API descriptions, and the checks every sandbox request goes through.

The copies live beside this module (`specs/`, package data, gzipped where large; see
specs/README.md), so the sandbox checks requests the same way in the tests, in
`offboard sandbox` and in the demo of an installed package: a request the vendor does not
describe is recorded and answered 400, instead of getting an answer the real service would
never give.

Graph: a path must resolve, segment by segment, to an entity set or singleton, a key, a
navigation or structural property, a type cast or a bound action/function of v1.0
(walking `BaseType`); every property of a JSON body must exist on its type (or on the
action's parameters), recursively into complex types; `$select` names must exist on
the type or one of its derived types. `$batch` bodies are checked request by request.
OpenAPI (BambooHR): openapi-core validates path, parameters and body against the document.
"""
from __future__ import annotations

import functools
import gzip
import json
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import requests
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest
from openapi_core.exceptions import OpenAPIError

FOLDER = Path(__file__).resolve().parent / "specs"

# openapi-core warns at each check whose security scheme type it does not model, and checks the rest of the
# request all the same; `offboard demo` would print the warning among its output (pyproject filters it for pytest)
warnings.filterwarnings("ignore", "Unsupported scheme type", UserWarning, r"openapi_core\.")


def open_spec(name: str):
    """A binary file object for `name` (`graph-v1.0-metadata.xml`), read from `name.gz` when that is what is kept."""
    plain = FOLDER / name
    return open(plain, "rb") if plain.exists() else gzip.open(FOLDER / f"{name}.gz", "rb")


@functools.cache
def openapi_dict(name: str) -> dict:
    with open_spec(name) as fh:      # libyaml where installed: the 1.3 MB RingCentral copy loads in 1 s, not 10
        return yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


class SpecViolation(AssertionError):
    """A request the vendor's API description does not allow."""


@functools.cache
def openapi(name: str) -> OpenAPI:
    """The document ready to check requests; it is not validated again here (tests/unit/test_vendor_specs.py does,
    once: validating the RingCentral copy takes longer than a client's read timeout)."""
    return OpenAPI.from_dict(openapi_dict(name), config=Config(spec_validator_cls=None))


def check_openapi(name: str, method: str, url: str, headers: dict, body: bytes) -> None:
    """Raise SpecViolation unless the request (at the vendor's own URL) is one the OpenAPI document allows."""
    prepared = requests.Request(method, url, headers=dict(headers), data=body or None).prepare()
    try:
        openapi(name).validate_request(RequestsOpenAPIRequest(prepared))
    except OpenAPIError as e:
        raise SpecViolation(f"{method} {url}: {e}") from None


SPEC = "graph-v1.0-metadata.xml"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
ANNOTATIONS = {"@odata.type", "@odata.id", "@odata.bind"}


class SchemaViolation(SpecViolation):
    """A request that Microsoft Graph v1.0 does not describe."""


class GraphSchema:
    def __init__(self, name: str = SPEC):
        with open_spec(name) as fh:
            root = ET.parse(fh).getroot()
        self.types: dict[str, ET.Element] = {}
        self.derived: dict[str, set[str]] = {}
        self.operations: dict[str, dict[str, list[ET.Element]]] = {}   # binding type -> name -> overloads
        self.roots: dict[str, str] = {}                                 # entity set / singleton -> type
        self.singletons: set[str] = set()
        #: CSDL aliases hold for the whole document: the main schema names `teamsAdministration.numberAssignment`
        self.aliases = {s.get("Alias"): s.get("Namespace") for s in root.iter(f"{EDM}Schema") if s.get("Alias")}
        for schema in root.iter(f"{EDM}Schema"):
            namespace, alias = schema.get("Namespace"), schema.get("Alias")
            qualify = functools.partial(self._qualify, namespace, alias)
            for element in schema:
                tag = element.tag.removeprefix(EDM)
                if tag in ("EntityType", "ComplexType"):
                    name = f"{namespace}.{element.get('Name')}"
                    element.set("qualify_ns", namespace)
                    element.set("qualify_alias", alias or "")
                    self.types[name] = element
                    if element.get("BaseType"):
                        self.derived.setdefault(qualify(element.get("BaseType")), set()).add(name)
                elif tag in ("Action", "Function") and element.get("IsBound") == "true":
                    binding = next(iter(element.findall(f"{EDM}Parameter")))
                    bound = qualify(binding.get("Type"))
                    element.set("qualify_ns", namespace)
                    element.set("qualify_alias", alias or "")
                    self.operations.setdefault(bound, {}).setdefault(element.get("Name"), []).append(element)
                elif tag == "EntityContainer":
                    for item in element:
                        kind = item.tag.removeprefix(EDM)
                        if kind in ("EntitySet", "Singleton"):
                            target = item.get("EntityType") or item.get("Type")
                            self.roots[item.get("Name")] = qualify(target)
                            if kind == "Singleton":
                                self.singletons.add(item.get("Name"))

    # -- types ------------------------------------------------------------
    def _qualify(self, namespace: str, alias: str | None, name: str) -> str:
        inner = name[len("Collection("):-1] if name.startswith("Collection(") else name
        if alias and inner.startswith(alias + "."):
            inner = namespace + inner[len(alias):]
        elif (prefix := inner.split(".", 1)[0]) in self.aliases:
            inner = self.aliases[prefix] + inner[len(prefix):]
        return f"Collection({inner})" if name.startswith("Collection(") else inner

    def _owner_qualify(self, element: ET.Element, name: str) -> str:
        return self._qualify(element.get("qualify_ns"), element.get("qualify_alias") or None, name)

    @functools.cache
    def members(self, type_name: str) -> dict[str, str]:
        """Structural and navigation properties of a type and all its base types: name -> type."""
        out: dict[str, str] = {}
        element = self.types.get(type_name)
        while element is not None:
            for prop in element:
                if prop.tag in (f"{EDM}Property", f"{EDM}NavigationProperty"):
                    out.setdefault(prop.get("Name"), self._owner_qualify(element, prop.get("Type")))
            base = element.get("BaseType")
            element = self.types.get(self._owner_qualify(element, base)) if base else None
        return out

    def lineage(self, type_name: str) -> list[str]:
        """The type and its base types, nearest first (bound operations may bind to any of them)."""
        out = []
        element = self.types.get(type_name)
        while element is not None:
            out.append(type_name)
            base = element.get("BaseType")
            type_name = self._owner_qualify(element, base) if base else ""
            element = self.types.get(type_name)
        return out

    def family(self, type_name: str) -> set[str]:
        """The type and every type derived from it: what a `$select` on a polymorphic collection may name."""
        out, todo = set(), [type_name]
        while todo:
            name = todo.pop()
            out.add(name)
            todo.extend(self.derived.get(name, ()))
        return out

    def operation(self, type_name: str, name: str, collection: bool) -> ET.Element | None:
        name = name.removeprefix("microsoft.graph.")
        for candidate in self.lineage(type_name):
            bound = f"Collection({candidate})" if collection else candidate
            for element in self.operations.get(bound, {}).get(name, []):
                return element
        return None

    # -- requests ---------------------------------------------------------
    def check(self, method: str, url: str, body: object = None) -> None:
        """Raise SchemaViolation unless `method url` with `body` is a v1.0 request."""
        parts = urlsplit(url)
        path = unquote(parts.path)
        if "/v1.0/" in path:
            path = path.split("/v1.0/", 1)[1]
        segments = [s for s in path.strip("/").split("/") if s]
        if segments == ["$batch"]:
            return self._check_batch(method, body)
        target = self.resolve(segments, url)
        query = parse_qs(parts.query)
        if "$select" in query:
            self._check_select(target, query["$select"][0], url)
        if body is not None and method in ("POST", "PATCH", "PUT"):
            self._check_body(target, body, url)

    def resolve(self, segments: list[str], url: str) -> tuple[str, str, ET.Element | None]:
        """-> (kind, type, operation): kind is entity, collection, operation, ref or value."""
        if not segments or segments[0] not in self.roots:
            raise SchemaViolation(f"{url}: no entity set or singleton {segments[0] if segments else ''!r} in Graph v1.0")
        first = segments[0]
        type_name = self.roots[first]
        kind = "entity" if first in self.singletons else "collection"
        operation = None
        for segment in segments[1:]:
            if kind in ("operation", "ref", "value"):
                raise SchemaViolation(f"{url}: nothing follows {segment!r} after an action, $ref or $value")
            name = re.sub(r"\(.*\)$", "", segment)
            if segment == "$ref":
                kind = "ref"
            elif segment in ("$count", "$value"):
                kind = "value"
            elif name.startswith("microsoft.graph.") and name in self.types:
                type_name = name                                   # a cast
            elif (operation := self.operation(type_name, name, kind == "collection")) is not None:
                returns = operation.find(f"{EDM}ReturnType")
                type_name = self._owner_qualify(operation, returns.get("Type")) if returns is not None else ""
                kind = "operation"
            elif kind == "collection":
                kind = "entity"                                    # a key
            elif name in self.members(type_name):
                declared = self.members(type_name)[name]
                kind = "collection" if declared.startswith("Collection(") else "entity"
                type_name = declared.removeprefix("Collection(").removesuffix(")")
            else:
                raise SchemaViolation(f"{url}: {type_name} has no property, navigation or bound operation {name!r}")
        return kind, type_name, operation

    def _check_select(self, target: tuple, select: str, url: str) -> None:
        kind, type_name, _ = target
        known: set[str] = set()
        for name in self.family(type_name):
            known.update(self.members(name))
        unknown = [p for p in select.split(",") if p.strip() and p.strip() not in known]
        if unknown:
            raise SchemaViolation(f"{url}: $select names {unknown} that {type_name} (and its derived types) lack")

    def _check_body(self, target: tuple, body: object, url: str) -> None:
        kind, type_name, op = target
        if kind == "ref":
            if not isinstance(body, dict) or set(body) != {"@odata.id"}:
                raise SchemaViolation(f"{url}: a $ref body is exactly {{'@odata.id': ...}}")
            return
        if kind == "operation":
            params = {p.get("Name"): self._owner_qualify(op, p.get("Type")) for p in op.findall(f"{EDM}Parameter")[1:]}
            self._check_object(params, body, f"{url} (parameters of {op.get('Name')})")
            return
        self._check_value(type_name, body, url)

    def _check_value(self, type_name: str, value: object, where: str) -> None:
        inner = type_name.removeprefix("Collection(").removesuffix(")")
        if inner not in self.types:
            return                                                  # Edm primitives and enums
        for item in (value if isinstance(value, list) else [value]):
            if isinstance(item, dict):
                cast = item.get("@odata.type", "").lstrip("#")
                self._check_object(self.members(cast if cast in self.types else inner), item, f"{where} ({inner})")

    def _check_object(self, properties: dict[str, str], body: object, where: str) -> None:
        if not isinstance(body, dict):
            raise SchemaViolation(f"{where}: expected a JSON object")
        for key, value in body.items():
            if key in ANNOTATIONS or key.endswith("@odata.bind"):
                continue
            if key not in properties:
                raise SchemaViolation(f"{where}: no property {key!r}")
            self._check_value(properties[key], value, f"{where}.{key}")

    def _check_batch(self, method: str, body: object) -> None:
        if method != "POST" or not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise SchemaViolation("$batch: POST with {'requests': [...]}")
        for sub in body["requests"]:
            unknown = set(sub) - {"id", "method", "url", "headers", "body", "dependsOn"}
            if unknown or not {"id", "method", "url"} <= set(sub):
                raise SchemaViolation(f"$batch request {sub.get('id')}: keys {sorted(sub)}")
            sub_body = sub.get("body")
            if isinstance(sub_body, str):
                sub_body = json.loads(sub_body)
            self.check(sub["method"], "/v1.0/" + sub["url"].lstrip("/"), sub_body)


@functools.cache
def graph_schema() -> GraphSchema:
    """Parsed once per process (about 0.2 s)."""
    return GraphSchema()
