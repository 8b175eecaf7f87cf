import math

import polars as pl

from analysis import tables


def cells(frame: pl.DataFrame) -> list[str]:
    """The text of each cell of the table's one row."""
    row = tables.to_html(frame, "t").split("<tbody><tr>")[1].split("</tr>")[0]
    return [cell.split(">", 1)[1] for cell in row.removesuffix("</td>").split("</td>")]


def test_each_figure_reads_in_its_unit_at_its_precision():
    frame = pl.DataFrame(
        {
            "best_quality": [0.12],
            "cost_usd": [0.01234],
            "total_cost_usd": [12.346],
            "latency_s": [0.012345],
            "train_time_s": [1234.5],
            "truncated_rate": [0.0637],
            "adapter_bytes": [1_234_567],
            "test_ci95": [[-0.0004, 0.25]],
            "pareto": [True],
            "lora.learning_rate": [0.00123456],
            "seeds": [2],
        }
    )
    assert cells(frame) == [
        "0.120", "$0.012", "$12.35", "0.012", "1200", "6.4%", "1.2", "0.000 to 0.250", "yes", "0.00123", "2",
    ]  # fmt: skip


def test_missing_figures_are_empty_cells_and_text_is_escaped():
    frame = pl.DataFrame(
        {"best_quality": [math.nan], "latency_s": [None], "error": ["<b>x & y</b>"]},
        schema_overrides={"latency_s": pl.Float64},
    )
    html = tables.to_html(frame, "failures")
    assert cells(frame) == ["", "", "&lt;b&gt;x &amp; y&lt;/b&gt;"]
    assert '<th class="num">quality</th>' in html and '<th class="num">latency (s)</th>' in html


def test_cells_keep_their_exact_value_for_sorting_and_an_empty_table_says_none():
    html = tables.to_html(pl.DataFrame({"cost_usd": [0.0123456]}), "t")
    assert 'data-value="0.0123456"' in html and ">$0.012<" in html
    assert (
        tables.to_html(pl.DataFrame({"trial_id": []}, schema={"trial_id": pl.String}), "t") == "<p>None.</p>"
    )


def test_text_from_a_shared_sweep_cannot_open_an_attribute_or_a_tag():
    """An error text, id or path comes from records a stranger may have written: each cell escapes
    it as html.escape does, quotes included, in its text and in its data-value attribute."""
    import html
    from html.parser import HTMLParser

    hostile = ['x" onmouseover="alert(1)', "y' onclick='alert(2)", "<script>alert(3)</script>", "a & b"]
    table = tables.to_html(pl.DataFrame({"error": hostile}), "failures")

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.attributes, self.tags = [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            if tag == "td":
                self.attributes.append(dict(attrs))

    parsed = Cells()
    parsed.feed(table)
    assert "script" not in parsed.tags
    assert [set(attributes) for attributes in parsed.attributes] == [{"data-value"}] * len(hostile)
    assert [attributes["data-value"] for attributes in parsed.attributes] == hostile
    assert all(html.escape(text, quote=True) in table for text in hostile)
