"""python scripts/report_screenshot.py SWEEP_DIR [--out docs/report.png]: the README's picture of a
sweep's report, rendered offline in headless Chromium (see analysis/browser.py).

The picture in the README comes from a real sweep on the embedded model:

    python -m sweeps.run qg --smoke --name screenshot
    python scripts/report_screenshot.py results/qg/screenshot

It shows the top of the page, down to the end of the first plot: the verdict, the tables and the
quality-cost Pareto front. Exit code 2 when the directory has no report.
"""

import argparse
import sys
from pathlib import Path

from analysis import browser

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "report.png"
MARGIN = 16  # pixels kept below the first plot


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(
        prog="python scripts/report_screenshot.py", description=__doc__.split("\n\n")[0]
    )
    cli.add_argument("sweep_dir", type=Path, help="a sweep's directory, holding report.html")
    cli.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"the PNG to write (default {DEFAULT_OUT})"
    )
    args = cli.parse_args(argv)
    report = args.sweep_dir / "report.html"
    if not report.is_file():
        print(f"error: sweep_dir: no report.html in {args.sweep_dir}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with browser.opened(report) as opened:
        first_plot = opened.page.locator(".plotly-graph-div").first.bounding_box()
        bottom = first_plot["y"] + first_plot["height"] + MARGIN
        top = {"x": 0, "y": 0, "width": browser.VIEWPORT["width"], "height": bottom}
        opened.page.screenshot(path=args.out, clip=top, full_page=True)
    if opened.errors:
        print(f"error: the report's scripts failed: {opened.errors[0]}", file=sys.stderr)
        return 1
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
