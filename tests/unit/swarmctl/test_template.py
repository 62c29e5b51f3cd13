"""The Go-template subset of ``--format``."""

from __future__ import annotations

import pytest

from swarmctl import template
from swarmctl.errors import TemplateError

SERVICE = {
    "meta": {"id": "abc123", "version": 7, "created_at": "2024-01-01T00:00:00Z"},
    "spec": {"annotations": {"name": "web", "labels": {"tier": "front"}}, "replicas": 3, "update_config": {}},
}


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("{{.ID}}", "abc123"),
        ("{{.Spec.Name}}", "web"),
        ("{{.Spec.Replicas}}", "3"),
        ("{{.Meta.Version}}", "7"),
        ("{{.CreatedAt}}", "2024-01-01T00:00:00Z"),
        ("{{.Spec.Labels.tier}}", "front"),
        ('{{index .Spec.Labels "tier"}}', "front"),
        ("{{json .Spec.Labels}}", '{"tier":"front"}'),
        ("{{.Spec.Name | upper}}", "WEB"),
        ("name={{.Spec.Name}}\\tid={{.ID}}", "name=web\tid=abc123"),
        ("{{len .Spec.Labels}}", "1"),
    ],
)
def test_fields_and_functions(fmt: str, out: str) -> None:
    assert template.parse(fmt).render(SERVICE) == out


def test_table_templates_have_headers() -> None:
    tpl = template.parse("table {{.ID}}\t{{.CreatedAt}}")
    assert tpl.table
    assert tpl.header() == "ID\tCREATED AT"


@pytest.mark.parametrize(
    ("fmt", "words"),
    [
        ("{{.Nope}}", "can't evaluate field Nope"),
        ("{{.Spec.Name", "unbalanced"),
        ("{{frobnicate .ID}}", 'function "frobnicate" not defined'),
        ("{{}}", "empty action"),
    ],
)
def test_template_errors(fmt: str, words: str) -> None:
    with pytest.raises(TemplateError, match=words):
        template.parse(fmt).render(SERVICE)
