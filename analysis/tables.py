"""The report's tables as HTML: every figure in its unit, rounded to what it can tell (quality to 3
decimals, dollars to tenths of a cent below $1 and to cents above, seconds to 2 significant
figures), each cell carrying its exact value for sorting. Formatting is polars expressions."""

import html
from collections.abc import Callable

import polars as pl


def fixed(value: pl.Expr, decimals: int) -> pl.Expr:
    """The value with exactly `decimals` decimals, trailing zeros kept (0.120, not 0.12)."""
    scaled = (value.abs() * 10**decimals).round(0).cast(pl.Int64)
    sign = pl.when((value < 0) & (scaled > 0)).then(pl.lit("-")).otherwise(pl.lit(""))
    whole = (scaled // 10**decimals).cast(pl.String)
    fraction = (scaled % 10**decimals).cast(pl.String).str.zfill(decimals)
    return pl.concat_str([sign, whole, pl.lit("."), fraction])


def significant(value: pl.Expr, figures: int) -> pl.Expr:
    return value.round_sig_figs(figures).cast(pl.String).str.replace(r"\.0$", "")


def quality(value: pl.Expr) -> pl.Expr:
    return fixed(value, 3)


def seconds(value: pl.Expr) -> pl.Expr:
    return significant(value, 2)


def dollars(value: pl.Expr) -> pl.Expr:
    return pl.lit("$") + pl.when(value.abs() >= 1).then(fixed(value, 2)).otherwise(fixed(value, 3))


def percent(share: pl.Expr) -> pl.Expr:
    return fixed(share * 100, 1) + pl.lit("%")


def megabytes(size_bytes: pl.Expr) -> pl.Expr:
    return significant(size_bytes / 1e6, 2)


def three_figures(value: pl.Expr) -> pl.Expr:
    return significant(value, 3)


def as_text(value: pl.Expr) -> pl.Expr:
    return value.cast(pl.String)


def interval(bounds: pl.Expr) -> pl.Expr:
    return pl.format("{} to {}", quality(bounds.list.first()), quality(bounds.list.last()))


# column -> (header with its unit, how its cells read); other columns keep their name and read as
# three significant figures (numbers) or as they are (text).
COLUMNS: dict[str, tuple[str, Callable[[pl.Expr], pl.Expr]]] = {
    "best_quality": ("quality", quality),
    "quality_std": ("quality std", quality),
    "seed_quality": ("quality (this seed)", quality),
    "subset_quality": ("quality (eval rows)", quality),
    "median_quality": ("median quality", quality),
    "utility": ("utility", quality),
    "validation": ("validation quality", quality),
    "validation_std": ("validation std", quality),
    "test": ("test quality", quality),
    "test_ci95": ("test 95% CI", interval),
    "truncated_rate": ("answers cut", percent),
    "accepted_draft_length": ("draft tokens kept", three_figures),
    "latency_s": ("latency (s)", seconds),
    "latency_per_token_s": ("latency per token (s)", seconds),
    "train_time_s": ("train time (s)", seconds),
    "tokens_per_s": ("tokens/s", three_figures),
    "cost_usd": ("cost", dollars),
    "total_cost_usd": ("total cost", dollars),
    "adapter_bytes": ("size (MB)", megabytes),
    "peak_memory_mb": ("peak memory (MB)", three_figures),
    "trial_id": ("trial", as_text),
}


# What html.escape(text, quote=True) replaces, in one pass over each column.
HTML_SPECIAL = ["&", "<", ">", '"', "'"]
HTML_ESCAPED = ["&amp;", "&lt;", "&gt;", "&quot;", "&#x27;"]


def _cell(name: str, dtype: pl.DataType) -> pl.Expr:
    value = pl.col(name)
    if dtype.is_float():
        value = value.fill_nan(None)
    if name in COLUMNS:
        text = COLUMNS[name][1](value)
    elif dtype == pl.Boolean:
        text = pl.when(value).then(pl.lit("yes")).otherwise(pl.lit(""))
    elif dtype.is_float():
        text = three_figures(value)
    else:
        text = as_text(value)
    # Quotes too: the text also goes into a data-value="..." attribute, and an error text or a path
    # from a shared sweep must not close it and open one of its own (an onmouseover, a script).
    escaped = text.str.replace_many(HTML_SPECIAL, HTML_ESCAPED).fill_null("")
    exact = value.cast(pl.String).fill_null("") if dtype.is_numeric() else escaped
    opening = '<td class="num" data-value="{}">' if dtype.is_numeric() else '<td data-value="{}">'
    return pl.format(opening + "{}</td>", exact, escaped).alias(name)


def to_html(frame: pl.DataFrame, table_id: str) -> str:
    """A table whose headers sort it and whose rows a search box filters (TABLE_SCRIPT)."""
    if frame.is_empty():
        return "<p>None.</p>"
    rows = frame.select(pl.concat_str([_cell(name, dtype) for name, dtype in frame.schema.items()]))
    head = "".join(
        f'<th class="{"num" if dtype.is_numeric() else "text"}">{html.escape(COLUMNS.get(name, (name,))[0])}</th>'
        for name, dtype in frame.schema.items()
    )
    body = "\n".join(f"<tr>{row}</tr>" for row in rows.to_series())
    search = f'<input type="search" data-filters="{table_id}" placeholder="filter rows">'
    return (
        search
        + f'<table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


# Click a header to sort by it (again to reverse) on each cell's exact value, empty cells last;
# type in a table's search box to show only the rows that contain the text.
TABLE_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((header) => {
  header.addEventListener("click", () => {
    const column = header.cellIndex;
    const body = header.closest("table").tBodies[0];
    const numeric = header.classList.contains("num");
    const descending = header.dataset.order !== "descending";
    header.dataset.order = descending ? "descending" : "ascending";
    const key = (row) => row.cells[column].dataset.value;
    const rows = Array.from(body.rows).sort((a, b) => {
      const [x, y] = [key(a), key(b)];
      const empty = (x === "") - (y === "");
      const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return empty || (descending ? -order : order);
    });
    body.append(...rows);
  });
});
document.querySelectorAll("input[data-filters]").forEach((search) => {
  search.addEventListener("input", () => {
    const wanted = search.value.toLowerCase();
    for (const row of document.getElementById(search.dataset.filters).tBodies[0].rows) {
      row.hidden = !row.textContent.toLowerCase().includes(wanted);
    }
  });
});
"""
