"""
The manifests under packaging/kubernetes/ validate against the Kubernetes and KServe schemas.

Kubernetes objects are checked with the JSON schemas shipped by the kubernetes-validate
package (strict: unknown fields are errors), for the oldest and newest Kubernetes minor
versions we claim. The KServe ServingRuntime is checked against
``schemas/servingruntime-serving-v1alpha1.json``, derived from KServe's published CRD
(its ``$comment`` says how), whose core/v1 parts refer to the same Kubernetes schemas.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

try:
    import jsonschema
    import kubernetes_validate
    import yaml
    from referencing import Registry, Resource
except ImportError as e:  # pragma: no cover - depends on the test environment
    reason = f"{e.name} is not installed (kubernetes-validate and PyYAML are test extras)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "packaging" / "kubernetes"
KSERVE_SCHEMA = Path(__file__).parent / "schemas" / "servingruntime-serving-v1alpha1.json"
KUBERNETES_VERSIONS = ("1.29", "1.33")


def load_documents() -> List[Dict[str, Any]]:
    """Every YAML document under packaging/kubernetes/."""
    docs: List[Dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> Dict[str, Any]:
    """The single document of a kind."""
    (doc,) = [d for d in load_documents() if d["kind"] == kind]
    return doc


def kserve_validator(k8s_version: str) -> jsonschema.protocols.Validator:
    """A validator for ServingRuntime, resolving core/v1 references to the shipped schemas."""
    import importlib.resources

    schema = json.loads(KSERVE_SCHEMA.read_text())
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    candidates = sorted(
        (p for p in folder.iterdir() if p.name.startswith(f"v{k8s_version}.") and p.name.endswith("-strict")),
        key=lambda p: p.name,
    )
    assert candidates, f"kubernetes-validate has no schemas for Kubernetes {k8s_version}"
    definitions = json.loads((candidates[-1] / "_definitions.json").read_text())
    registry = Registry().with_resources(
        [
            (definitions["$id"], Resource.from_contents(definitions)),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_expected_objects_are_there() -> None:
    kinds = sorted(d["kind"] for d in load_documents())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service", "ServingRuntime"]


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
def test_kubernetes_objects_validate(kind: str, k8s_version: str) -> None:
    kubernetes_validate.validate(by_kind(kind), k8s_version, strict=True)


@pytest.mark.parametrize("k8s_version", KUBERNETES_VERSIONS)
def test_serving_runtime_validates(k8s_version: str) -> None:
    validator = kserve_validator(k8s_version)
    runtime = by_kind("ServingRuntime")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(runtime)]
    assert errors == []


def test_kubernetes_validation_catches_mistakes() -> None:
    """The strict schemas do reject a misspelt field and a wrong type (the check can fail)."""
    deployment = copy.deepcopy(by_kind("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(by_kind("Deployment"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda sr: sr["spec"].update(protocolVersions=["v3"]), id="unknown-protocol"),
        pytest.param(lambda sr: sr["spec"].pop("containers"), id="no-containers"),
        pytest.param(
            lambda sr: sr["spec"]["containers"][0].update(imagePolicy="x"), id="bad-container-field"
        ),
        pytest.param(lambda sr: sr["spec"]["supportedModelFormats"][0].update(priority=0), id="priority-0"),
        pytest.param(lambda sr: sr["spec"].update(multiModels=True), id="misspelt-spec-field"),
    ],
)
def test_serving_runtime_schema_catches_mistakes(mutate: Any) -> None:
    runtime = copy.deepcopy(by_kind("ServingRuntime"))
    mutate(runtime)
    assert list(kserve_validator(KUBERNETES_VERSIONS[-1]).iter_errors(runtime))


def _container(doc: Dict[str, Any]) -> Dict[str, Any]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    return spec["containers"][0]


@pytest.mark.parametrize("kind", ["Deployment", "ServingRuntime"])
def test_probes_use_the_v2_health_endpoints(kind: str) -> None:
    container = _container(by_kind(kind))
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_objects_fit_together() -> None:
    deployment, service, hpa = by_kind("Deployment"), by_kind("Service"), by_kind("HorizontalPodAutoscaler")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in _container(deployment)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "v2d"}
    # CPU utilisation targets need a CPU request.
    assert "cpu" in _container(deployment)["resources"]["requests"]


def test_serving_runtime_speaks_protocol_v2() -> None:
    runtime = by_kind("ServingRuntime")
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert runtime["spec"]["containers"][0]["name"] == "kserve-container"
    args = runtime["spec"]["containers"][0]["args"]
    assert args[args.index("--models") + 1] == "/mnt/models"
