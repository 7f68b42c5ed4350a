"""Panel, query, variable and link factories on top of grafana-foundation-sdk's builders.

Every factory takes a title, a description (what the panel shows and why it matters) and a unit, so no
panel leaves this module without them. Queries go to the dashboard's ``$datasource`` (Prometheus).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import bargauge, heatmap, histogram, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prom_model

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "gpuattr"

# Grafana units (https://grafana.com/docs/grafana/latest/panels-visualizations/configure-standard-options/).
BYTES = "bytes"  # IEC: KiB, MiB, GiB
RATIO = "percentunit"  # 0..1 shown as 0..100%
PERCENT = "percent"  # 0..100
COUNT = "short"  # GPUs, pods, GPU-hours
TOKENS_PER_S = "short"
MONEY = "short"  # an amount in the dashboard's $currency: Grafana takes no unit from a variable
CURRENCY = "${currency}"
"""The currency of every cost, for titles, legends and descriptions (a dashboard variable)."""
SECONDS = "s"
WATTS = "watt"


@dataclass(frozen=True)
class Query:
    """One PromQL target; ``legend`` is Grafana's legend format (``{{label}}``)."""

    expr: str
    legend: str = ""

    def target(self, ref: str, *, instant: bool, table: bool = False) -> prom.Dataquery:
        q = prom.Dataquery().expr(self.expr).ref_id(ref).datasource(DATASOURCE)
        if self.legend:
            q = q.legend_format(self.legend)
        q = q.instant() if instant else q.range()
        if table:
            q = q.format(prom_model.PromQueryFormat.TABLE)
        return q


class _Panel(Protocol):
    """What every panel builder of the SDK offers (each panel type is its own class there)."""

    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def datasource(self, datasource: model.DataSourceRef) -> Self: ...
    def span(self, w: int) -> Self: ...
    def height(self, h: int) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...


P = TypeVar("P", bound=_Panel)


def _refs(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def _setup(
    panel: P,
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    span: int,
    height: int,
    instant: bool,
    table: bool = False,
) -> P:
    if not (title and description and unit and queries):
        raise ValueError(f"panel {title!r}: title, description, unit and at least one query are required")
    panel = panel.title(title).description(description).unit(unit).datasource(DATASOURCE).span(span).height(height)
    for ref, query in zip(_refs(len(queries)), queries, strict=True):
        panel = panel.with_target(query.target(ref, instant=instant, table=table))
    return panel


def _legend(*, table: bool = False) -> common_builders.VizLegendOptions:
    legend = common_builders.VizLegendOptions().show_legend(True).placement(common.LegendPlacement.BOTTOM)
    if table:
        return legend.display_mode(common.LegendDisplayMode.TABLE).calcs(["mean", "max", "lastNotNull"])
    return legend.display_mode(common.LegendDisplayMode.LIST)


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    stack: bool = False,
    span: int = 12,
    height: int = 8,
    min_value: float | None = 0,
    right_axis: Sequence[tuple[str, str]] = (),
    lines: Sequence[str] = (),
) -> timeseries.Panel:
    """A time series; ``stack`` stacks the series (parts of a whole); ``right_axis`` puts the queries with
    the given refIds on a right-hand axis with their own unit; ``lines`` draws the queries with the given
    refIds as dashed, unstacked lines (a capacity or a limit above a stack)."""
    panel = _setup(timeseries.Panel(), title, description, unit, queries, span=span, height=height, instant=False)
    panel = (
        panel.line_width(1)
        .fill_opacity(35 if stack else 10)
        .legend(_legend(table=True))
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if min_value is not None:
        panel = panel.min(min_value)
    if stack:
        panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    for ref in lines:
        panel = panel.override_by_query(
            ref,
            [
                model.DynamicConfigValue(id_val="custom.stacking", value={"mode": "none", "group": "A"}),
                model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            ],
        )
    for ref, axis_unit in right_axis:
        panel = panel.override_by_query(
            ref,
            [
                model.DynamicConfigValue(id_val="unit", value=axis_unit),
                model.DynamicConfigValue(id_val="custom.axisPlacement", value=common.AxisPlacement.RIGHT.value),
                model.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
                model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
            ],
        )
    return panel


def stat_panel(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    span: int = 4,
    height: int = 5,
    decimals: int | None = None,
) -> stat.Panel:
    """One number, the query's current value."""
    panel = _setup(stat.Panel(), title, description, unit, [query], span=span, height=height, instant=True)
    panel = (
        panel.graph_mode(common.BigValueGraphMode.NONE)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    span: int = 8,
    height: int = 8,
    max_value: float | None = None,
) -> bargauge.Panel:
    """Horizontal bars, one per series (a ranking: wrap the query in ``sort_desc(topk(…))``)."""
    panel = _setup(bargauge.Panel(), title, description, unit, queries, span=span, height=height, instant=True)
    panel = (
        panel.orientation(common.VizOrientation.HORIZONTAL)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .min(0)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if max_value is not None:
        panel = panel.max(max_value)
    return panel


@dataclass(frozen=True)
class Column:
    """One value column of a table: its query, its header and its unit."""

    query: Query
    header: str
    unit: str


def table_panel(
    title: str,
    description: str,
    unit: str,
    columns: Sequence[Column],
    *,
    labels: Sequence[str],
    span: int = 24,
    height: int = 8,
    sort_by: str | None = None,
) -> table.Panel:
    """A table: one row per label set (``labels``, in that order), one value column per query (merged)."""
    panel = _setup(
        table.Panel(),
        title,
        description,
        unit,
        [col.query for col in columns],
        span=span,
        height=height,
        instant=True,
        table=True,
    )
    refs = _refs(len(columns))
    # Instant table queries give columns Time, <labels…>, "Value #<refId>"; merge joins them on the labels.
    renames = {f"Value #{ref}": col.header for ref, col in zip(refs, columns, strict=True)}
    if len(columns) == 1:
        renames = {"Value": columns[0].header}
    order = {name: i for i, name in enumerate([*labels, *renames])}
    panel = panel.align(common.FieldTextAlignment.AUTO).inspect(False)
    panel = panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(
        model.DataTransformerConfig(
            id_val="organize",
            options={
                "excludeByName": {"Time": True, "__name__": True, "instance": False, "job": True},
                "indexByName": order,
                "renameByName": renames,
            },
        )
    )
    for col in columns:
        panel = panel.override_by_name(col.header, [model.DynamicConfigValue(id_val="unit", value=col.unit)])
    if sort_by is not None:
        panel = panel.sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def heatmap_panel(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    bucket_size: str,
    span: int = 12,
    height: int = 8,
) -> heatmap.Panel:
    """A heatmap that buckets the values of many series at each time step (how many are how busy)."""
    panel = _setup(heatmap.Panel(), title, description, unit, [query], span=span, height=height, instant=False)
    return (
        panel.calculate(True)
        .calculation(
            common_builders.HeatmapCalculationOptions().y_buckets(
                common_builders.HeatmapCalculationBucketConfig()
                .mode(common.HeatmapCalculationMode.SIZE)
                .value(bucket_size)
            )
        )
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .y_axis(heatmap.YAxisConfig().unit(unit).min(0))
        .scale_distribution(common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LINEAR))
        .hide_from(common_builders.HideSeriesConfig().legend(False).tooltip(False).viz(False))
        .cell_values(heatmap.CellValues().unit(COUNT))
        .show_legend()
    )


def histogram_panel(
    title: str,
    description: str,
    unit: str,
    query: Query,
    *,
    bucket_size: int,
    span: int = 12,
    height: int = 8,
) -> histogram.Panel:
    """How many series have a value in each bucket (all series combined into one histogram)."""
    panel = _setup(histogram.Panel(), title, description, unit, [query], span=span, height=height, instant=True)
    return panel.bucket_size(bucket_size).bucket_offset(0).combine(True).fill_opacity(60).legend(_legend()).min(0)


def row(title: str) -> dash.Row:
    return dash.Row(title)


# Variables ---------------------------------------------------------------------------------------------


def datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the gpu-attribution exporters and evaluates its recording rules.")
    )


def query_variable(
    name: str,
    label: str,
    query: str,
    description: str,
    *,
    multi: bool = True,
    regex: str | None = None,
) -> dash.QueryVariable:
    """A variable filled from Prometheus (``label_values(…)``/``query_result(…)``), refreshed when the time
    range changes. Multi-value variables offer "All", sent as ``.*`` (every value, even ones not listed)."""
    var = (
        dash.QueryVariable(name)
        .label(label)
        .description(description)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )
    if regex is not None:
        var = var.regex(regex)
    if multi:
        var = (
            var.multi(True)
            .include_all(True)
            .all_value(".*")
            .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
        )
    return var


def source_variable() -> dash.CustomVariable:
    """Which measurement of per-container SM activity and bandwidth to show (docs/metrics.md, "Where activity
    numbers come from"); kernel time has its own panels and needs no choice."""
    options = [
        ("measured on the device: GPM where the GPU has it; NVML time for bandwidth elsewhere", "nvml|mps|gpm"),
        ("dcgm: dcgm-exporter profiling fields split by process", "dcgm"),
    ]
    # Grafana splits a custom variable's query on commas and each entry on " : " (text : value): no commas.
    return (
        dash.CustomVariable("source")
        .label("Activity source")
        .description(
            "Where per-container SM activity and bandwidth come from. The series of one source never add up "
            "with another's: pick one. Kernel time (NVML per-process smUtil) is shown apart: it is time, not SMs."
        )
        .values(", ".join(f"{text} : {value}" for text, value in options))
        .current(model.VariableOption(selected=True, text=options[0][0], value=options[0][1]))
        .options([model.VariableOption(selected=i == 0, text=t, value=v) for i, (t, v) in enumerate(options)])
        .multi(False)
        .include_all(False)
    )


def price_variable(default: str = "2.5") -> dash.CustomVariable:
    """The price of one GPU-hour in the dashboard's currency; pick one or type your own."""
    values = [default, "1", "2", "4", "8"]
    return (
        dash.CustomVariable("gpu_hour_price")
        .label("Price per GPU-hour")
        .description(
            "What one GPU costs per hour, in the currency of the Currency variable (your cloud or amortised "
            "on-prem price); type your own. Costs on this dashboard are GPU-hours times this price."
        )
        .values(",".join(values))
        .current(model.VariableOption(selected=True, text=default, value=default))
        .options([model.VariableOption(selected=v == default, text=v, value=v) for v in values])
        .multi(False)
        .include_all(False)
        .allow_custom_value(True)
    )


def currency_variable(default: str = "USD") -> dash.TextBoxVariable:
    """The currency of the price and of every cost, shown in cost panels' titles and legends (type your own:
    EUR, GBP, €…). Grafana does not take a panel's unit from a variable, so costs are plain numbers."""
    return (
        dash.TextBoxVariable("currency")
        .label("Currency")
        .description(
            "The currency of the price per GPU-hour and of every cost on this dashboard (a code or a symbol); "
            "it names the amounts, it converts nothing."
        )
        .default_value(default)
        .current(model.VariableOption(selected=True, text=default, value=default))
    )


def dashboard_links() -> list[dash.DashboardLink]:
    """A drop-down of the other gpuattr dashboards that keeps the time range and the variables."""
    return [
        dash.DashboardLink("GPU attribution")
        .type(model.DashboardLinkType.DASHBOARDS)
        .tags([TAG])
        .as_dropdown(True)
        .include_vars(True)
        .keep_time(True)
        .target_blank(False)
        .tooltip("The other GPU attribution dashboards, with this time range and these variables")
    ]


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([TAG])
        .time("now-6h", "now")
        .timezone("browser")
        .refresh("1m")
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .links(list[cogbuilder.Builder[model.DashboardLink]](dashboard_links()))
    )
