"""The generated dashboards: current, loadable by the SDK, every panel titled, described and with a unit,
every metric name from the catalog, and every dashboard shipped by the kustomization."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom_model

from alerts import rules as r
from common import catalog as c
from dashboards import build
from tests.conftest import ROOT

GENERATED = ROOT / "dashboards" / "generated"
FILES = sorted(build.render_all())


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GENERATED / name).read_text(encoding="utf-8"))
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including the panels inside collapsed rows."""
    for panel in board.get("panels", []):
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_generated_files_are_current() -> None:
    assert build.stale(GENERATED) == [], "run `python -m dashboards.build` and commit dashboards/generated/"


def test_rendering_is_deterministic_and_ends_with_a_newline() -> None:
    first, second = build.render_all(), build.render_all()
    assert first == second
    assert all(text.endswith("}\n") for text in first.values())


def test_write_then_stale_finds_nothing_and_notices_an_edit(tmp_path: Path) -> None:
    written = build.write(tmp_path)
    assert sorted(p.name for p in written) == FILES
    assert build.stale(tmp_path) == []
    (tmp_path / FILES[0]).write_text("{}\n", encoding="utf-8")
    assert build.stale(tmp_path) == [FILES[0]]


def test_main_check_fails_on_a_stale_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert build.main(["--out-dir", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert build.main(["--out-dir", str(tmp_path)]) == 0
    assert build.main(["--out-dir", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("name", FILES)
def test_json_round_trips_through_the_sdk_models(name: str) -> None:
    register_default_plugins()
    text = (GENERATED / name).read_text(encoding="utf-8")
    board = model.Dashboard.from_json(json.loads(text))
    again = json.dumps(board, cls=JSONEncoder, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert again == text
    targets = [t for p in board.panels or [] if isinstance(p, model.Panel) for t in p.targets or []]
    assert targets
    assert all(isinstance(t, prom_model.Dataquery) for t in targets)  # typed, not an unknown bag


@pytest.mark.parametrize("name", FILES)
def test_every_panel_has_a_title_a_description_a_unit_and_queries(name: str) -> None:
    board = _load(name)
    found = list(panels(board))
    assert len(found) >= 5
    for panel in found:
        where = f"{name}: panel {panel.get('id')} {panel.get('title')!r}"
        assert panel.get("title"), where
        assert len(panel.get("description", "")) >= 40, where
        assert panel.get("fieldConfig", {}).get("defaults", {}).get("unit"), where
        assert panel.get("targets"), where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert all(t["datasource"] == panel["datasource"] and t["expr"] for t in panel["targets"]), where
    for row in (p for p in board["panels"] if p["type"] == "row"):
        assert row.get("title")


@pytest.mark.parametrize("name", FILES)
def test_panel_ids_are_unique_and_the_layout_stays_on_the_grid(name: str) -> None:
    board = _load(name)
    everything = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    for panel in everything:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_dashboards_have_stable_uids_the_tag_six_hours_and_links_that_carry_variables() -> None:
    boards = [_load(name) for name in FILES]
    assert [b["uid"] for b in boards] == [name.removesuffix(".json") for name in FILES]
    for board in boards:
        assert board["tags"] == ["gpuattr"]
        assert board["time"] == {"from": "now-6h", "to": "now"}
        (link,) = board["links"]
        assert (link["type"], link["tags"], link["keepTime"], link["includeVars"]) == (
            "dashboards",
            ["gpuattr"],
            True,
            True,
        )
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"


def _variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


BUILTIN = {"__rate_interval", "__range", "__range_s", "__range_ms", "__interval", "__interval_ms"}


@pytest.mark.parametrize("name", FILES)
def test_every_variable_a_query_uses_is_defined_on_its_dashboard(name: str) -> None:
    board = _load(name)
    defined = set(_variables(board)) | BUILTIN
    queries = [e for _, e in exprs(board)] + [v["query"] for v in _variables(board).values() if v["type"] == "query"]
    queries += [p["title"] for p in panels(board)]
    used = {m.group(1) or m.group(2) for q in queries for m in re.finditer(r"\$\{(\w+)\}|\$(\w+)", q)}
    assert used <= defined, used - defined


def test_multi_value_variables_send_dot_star_for_all_and_chain_on_their_parents() -> None:
    node = _variables(_load("gpuattr-workload-model.json"))
    for name in ("node", "namespace", "model"):
        assert (node[name]["multi"], node[name]["includeAll"], node[name]["allValue"]) == (True, True, ".*")
    assert "$node" in node["namespace"]["query"]
    assert "$namespace" in node["model"]["query"] and "$node" in node["model"]["query"]
    gpu = _variables(_load("gpuattr-node-gpu.json"))["gpu"]
    assert not gpu["multi"] and "$node" in gpu["query"]
    pod = _variables(_load("gpuattr-vllm-memory.json"))["pod"]
    assert "$model" in pod["query"] and "$namespace" in pod["query"]


def _grafana_custom_options(query: str) -> list[tuple[str, str]]:
    """Grafana's parsing of a custom variable: comma-separated entries, each ``text : value`` or a value."""
    entries = [e.strip() for e in re.findall(r"(?:\\,|[^,])+", query)]
    options = []
    for entry in entries:
        text, _, value = entry.partition(" : ")
        options.append((text, value) if value else (entry, entry))
    return options


@pytest.mark.parametrize("name", FILES)
def test_custom_variables_parse_into_their_options_and_default_to_one_of_them(name: str) -> None:
    for var in _variables(_load(name)).values():
        if var["type"] != "custom":
            continue
        parsed = _grafana_custom_options(var["query"])
        assert parsed == [(o["text"], o["value"]) for o in var["options"]], var["name"]
        assert (var["current"]["text"], var["current"]["value"]) in parsed


def test_cost_dashboards_default_to_a_gpu_hour_price_users_can_change() -> None:
    for name in ("gpuattr-cluster-efficiency.json", "gpuattr-workload-model.json"):
        price = _variables(_load(name))["gpu_hour_price"]
        assert price["current"]["value"] == "2.5" and price["allowCustomValue"] is True


KNOWN = (
    {m.name for m in c.all_metrics()}
    | {v for k, v in vars(r).items() if k.isupper() and isinstance(v, str) and v.count(":") == 2}
    | {
        name
        for value in vars(c.External).values()
        for name in ((value,) if isinstance(value, str) else value if isinstance(value, tuple) else ())
    }
)
# PromQL functions and keywords look like names too; metric names here all contain "_" and ":" or "gpuattr_".
METRIC_LIKE = re.compile(r"(?<![\w:$.])((?:gpuattr_|vllm:|DCGM_)[\w:]*|[a-z_]+:[\w]+:[\w]+)")


@pytest.mark.parametrize("name", FILES)
def test_every_metric_name_in_a_query_is_in_the_catalog_or_the_rules(name: str) -> None:
    board = _load(name)
    queries = [e for _, e in exprs(board)] + [v["query"] for v in _variables(board).values() if v["type"] == "query"]
    used = {m.group(1) for q in queries for m in METRIC_LIKE.finditer(q)}
    used = {u.removesuffix("_bucket") for u in used}
    assert used, name
    assert used <= KNOWN, used - KNOWN


def test_no_dashboard_module_types_a_metric_or_rule_name() -> None:
    names = {n for n in KNOWN if n != c.External.PROMETHEUS_UP}
    for module in sorted((ROOT / "dashboards").glob("*.py")):
        source = module.read_text(encoding="utf-8")
        typed = {n for n in names if re.search(rf"[\"'{{(\s]{re.escape(n)}[\"'}}{{)\[\s]", source)}
        assert not typed, f"{module.name} types {typed}: import it from common.catalog / alerts.rules"


def test_the_kustomization_ships_every_generated_dashboard_as_a_labelled_configmap() -> None:
    kustomization = yaml.safe_load((GENERATED / "kustomization.yaml").read_text(encoding="utf-8"))
    generators = kustomization["configMapGenerator"]
    assert sorted(f for g in generators for f in g["files"]) == FILES
    for g in generators:
        assert g["options"]["labels"]["grafana_dashboard"] == "1"
        assert g["options"]["disableNameSuffixHash"] is True
    deploy = yaml.safe_load((ROOT / "deploy" / "dashboards" / "kustomization.yaml").read_text(encoding="utf-8"))
    assert deploy["resources"] == ["../../dashboards/generated"]


def test_each_configmap_stays_far_below_the_annotation_limit_of_client_side_apply() -> None:
    # kubectl apply stores the object in an annotation limited to 256 KiB.
    assert all(len(text.encode()) < 200 * 1024 for text in build.render_all().values())


def _costs(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels with an amount of money: a query priced by $gpu_hour_price."""
    return [p for p in panels(board) if any("$gpu_hour_price" in t["expr"] for t in p.get("targets", []))]


@pytest.mark.parametrize("name", FILES)
def test_costs_name_the_currency_variable_and_no_fixed_currency(name: str) -> None:
    board = _load(name)
    costs = _costs(board)
    if not costs:
        assert "currency" not in _variables(board)
        return
    currency = _variables(board)["currency"]
    assert currency["type"] == "textbox" and currency["query"] == currency["current"]["value"] == "USD"
    for panel in costs:
        assert "${currency}" in panel["title"], panel["title"]
        units = [panel["fieldConfig"]["defaults"].get("unit", "")]
        units += [
            prop["value"]
            for override in panel["fieldConfig"].get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "unit"
        ]
        assert not [u for u in units if u.startswith("currency")], (panel["title"], units)
    # the variable's default is the only USD: no unit, title or legend fixes the currency
    board["templating"]["list"].remove(currency)
    assert "USD" not in json.dumps(board)
