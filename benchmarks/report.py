"""Output: the terminal table, the JSON file, the markdown summary and the PNG plots.

Every view repeats where the figures come from (card, versions, commit, ceilings) and, for a
CPU run, says on every line that these are CPU figures, not GPU figures.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

OP_ORDER = ("softmax", "layer_norm", "add_layer_norm", "attention", "gelu_linear", "gpt")
MODE_ORDER = ("fwd", "bwd", "decode", "train")
PROVIDER_ORDER = ("triton", "cuda", "auto", "eager", "compile", "sdpa", "liger")
STATUS_STYLE = {"ok": "", "wrong": "bold red", "error": "red", "skipped": "dim"}


def _index(seq, item):
    return seq.index(item) if item in seq else len(seq)


def sort_key(r: dict):
    return (_index(OP_ORDER, r["op"]), _index(MODE_ORDER, r["mode"]), r["dtype"], r["series"],
            r["x"], _index(PROVIDER_ORDER, r["provider"]))


def group_key(r: dict):
    return (r["op"], r["mode"], r["dtype"])


def fmt_value(r: dict) -> str:
    if r["status"] != "ok":
        return ""
    text = f"{r['value']:,.1f} {r['unit']}" if r["value"] >= 10 else f"{r['value']:.3g} {r['unit']}"
    if r["tokens_per_s"] is not None:
        text = f"{r['tokens_per_s']:,.0f} tok/s  ({text})"
    return text


def fmt(value, spec: str, suffix: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{suffix}"


def ceilings_line(meta: dict) -> str:
    c = meta["ceilings"]
    mm = ", ".join(f"{k} {v:,.4g}" for k, v in sorted(c["matmul_tflops"].items()))
    return f"ceilings measured this run: copy {c['copy_gbps']:,.4g} GB/s (read + write); matmul TFLOP/s: {mm}"


def header_lines(meta: dict) -> list[str]:
    i = meta["info"]
    lines = [f"device: {i['device']}", f"torch {i['torch']}, triton {i['triton']}, CUDA runtime "
             f"{i['cuda_runtime']}, driver {i['driver']}, python {i['python']}; commit {i['commit']}",
             ceilings_line(meta)]
    if i["cpu_figure"]:
        lines.insert(0, "CPU RUN: every figure below is a CPU figure, not a GPU figure.")
    return lines


# ---------------------------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------------------------

def status_text(r: dict) -> str:
    text = r["status"] + (f": {r['reason']}" if r["reason"] else "")
    label = r["note"].replace("CPU figure, not a GPU figure", "").strip("; ")
    return f"{text} ({label})" if label else text


def skipped_summary(records: list[dict]) -> list[str]:
    """Skipped providers grouped by reason (one line each instead of one table row per case)."""
    groups = defaultdict(list)
    for r in sorted(records, key=sort_key):
        if r["status"] == "skipped":
            where = f"{r['op']} {r['mode']}"
            cases = groups[(r["provider"], r["reason"])]
            if where not in cases:
                cases.append(where)
    return [f"{provider}: {reason} [{', '.join(cases)}]" for (provider, reason), cases in groups.items()]


def print_table(records: list[dict], meta: dict, console=None) -> None:
    shown = [r for r in records if r["status"] != "skipped"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\n".join(header_lines(meta) + markdown_tables(shown, meta) + ["", "skipped:"]
                        + skipped_summary(records)))
        return
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file: do not fold the table into 80 columns
            console = Console(width=200)
    cpu = meta["info"]["cpu_figure"]
    table = Table(title="gptk benchmarks" + (" - CPU figures, not GPU figures" if cpu else ""),
                  caption="\n".join(header_lines(meta)), caption_justify="left")
    for name, justify in (("where", "left"), ("case", "left"), ("shape", "left"), ("provider", "left"),
                          ("ms", "right"), ("throughput", "right"), ("% peak", "right"),
                          ("vs eager", "right"), ("mem MiB", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    last = None
    for r in sorted(shown, key=sort_key):
        if last is not None and group_key(r) != last:
            table.add_section()
        last = group_key(r)
        table.add_row("CPU" if r["cpu_figure"] else "GPU", f"{r['op']} {r['mode']} {r['dtype']}", r["shape"],
                      r["provider"], fmt(r["ms"], ".4g"), fmt_value(r), fmt(r["pct_of_peak"], ".1f", "%"),
                      fmt(r["vs_eager"], ".2f", "x"), fmt(r["peak_mem_mib"], ",.0f"), status_text(r),
                      style=STATUS_STYLE.get(r["status"], ""))
    console.print(table)
    skipped = skipped_summary(records)
    if skipped:
        from rich.markup import escape
        console.print("[dim]not run:[/dim]")
        for line in skipped:
            console.print(f"[dim]  {escape(line)}[/dim]", highlight=False)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------

def write_json(path: Path, records: list[dict], meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "records": sorted(records, key=sort_key)}, indent=1,
                               default=str) + "\n")


def load_json(path: Path) -> tuple[list[dict], dict]:
    data = json.loads(Path(path).read_text())
    return data["records"], data["meta"]


def markdown_tables(records: list[dict], meta: dict) -> list[str]:
    groups = defaultdict(list)
    for r in sorted(records, key=sort_key):
        if r["status"] != "skipped":
            groups[group_key(r)].append(r)
    where = "CPU" if meta["info"]["cpu_figure"] else "GPU"
    lines = []
    for (op, mode, dtype), rows in groups.items():
        lines += ["", f"### {op} {mode} {dtype} ({where})", "",
                  "| shape | provider | ms | throughput | % of peak | vs eager | peak MiB | status |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            status = status_text(r)
            lines.append(f"| {r['shape']} | {r['provider']} | {fmt(r['ms'], '.4g')} | {fmt_value(r)} | "
                         f"{fmt(r['pct_of_peak'], '.1f', '%')} | {fmt(r['vs_eager'], '.2f', 'x')} | "
                         f"{fmt(r['peak_mem_mib'], ',.0f')} | {status.replace('|', '/')} |")
    return lines


def write_markdown(path: Path, records: list[dict], meta: dict) -> None:
    counts = defaultdict(int)
    for r in records:
        counts[r["status"]] += 1
    bad = [r for r in records if r["status"] in ("wrong", "error")]
    lines = ["# gptk benchmark summary", ""] + [f"- {line}" for line in header_lines(meta)]
    if not meta["info"]["cpu_figure"]:
        from .env import card_slug
        lines.append(f"- results folder: `benchmarks/results/{meta['date'][:10]}-{card_slug(meta['info'])}/`")
    lines += [f"- run: `{meta['argv']}` at {meta['date']}, {meta['seconds']:.0f} s",
              "- records: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
              "- method: median of `triton.testing.do_bench` (CUDA events, L2 flushed) per call; whole-model "
              "cases: median of synchronized calls. % of peak is over the ceiling measured in this run "
              "(copy for GB/s, matmul of the same dtype for TFLOP/s); vs eager = eager ms / provider ms."]
    if bad:
        lines += ["", "## Wrong or failing providers", ""]
        lines += [f"- {r['op']} {r['mode']} {r['dtype']} {r['shape']} {r['provider']}: {status_text(r)}"
                  for r in sorted(bad, key=sort_key)]
    lines += ["", "## Results"] + markdown_tables(records, meta)
    skipped = skipped_summary(records)
    if skipped:
        lines += ["", "## Not run", ""] + [f"- {line}" for line in skipped]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_plots(directory: Path, records: list[dict], meta: dict) -> list[str]:
    """One PNG per op and dtype: a panel per mode, throughput against the swept size, one line
    per provider (and per fixed second dimension, e.g. head dim), the ceiling dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    where = "CPU figures, not GPU" if meta["info"]["cpu_figure"] else meta["info"]["device"]
    by_op = defaultdict(list)
    for r in records:
        if r["status"] == "ok":
            by_op[(r["op"], r["dtype"])].append(r)
    written = []
    for (op, dtype), rows in sorted(by_op.items(), key=lambda kv: (_index(OP_ORDER, kv[0][0]), kv[0][1])):
        modes = [m for m in MODE_ORDER if any(r["mode"] == m for r in rows)]
        fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            mine = [r for r in rows if r["mode"] == mode]
            tokens = mine[0]["tokens_per_s"] is not None  # whole model: tokens/s reads better than GB/s
            lines = defaultdict(list)
            for r in sorted(mine, key=lambda r: r["x"]):
                lines[(r["provider"], r["series"])].append(r)
            for (provider, series), pts in sorted(lines.items(), key=lambda kv: (_index(PROVIDER_ORDER, kv[0][0]),
                                                                                  kv[0][1])):
                label = provider + (f" {series}" if series else "")
                ax.plot([p["x"] for p in pts], [p["tokens_per_s"] if tokens else p["value"] for p in pts],
                        marker="o", label=label, linestyle="-" if provider in ("triton", "cuda") else "--")
            peak = next((r["peak_value"] for r in mine if r["peak_value"]), None)
            if peak and not tokens:
                ax.axhline(peak, color="grey", linestyle=":", linewidth=1)
                ax.text(0.01, peak, f" {mine[0]['peak']} ceiling (measured)", transform=ax.get_yaxis_transform(),
                        va="bottom", fontsize=8, color="grey")
            ax.set_xscale("log", base=2)
            ax.set_xlabel(mine[0]["xlabel"])
            ax.set_ylabel("tokens/s" if tokens else mine[0]["unit"])
            ax.set_ylim(bottom=0)
            ax.set_title(f"{op} {mode} {dtype}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(where, fontsize=9)
        fig.tight_layout()
        path = directory / f"{op}_{dtype}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written
