"""Turn the results JSON into a Markdown report and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path


def _median(rows, **where):
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()):
            return row["median_s"]
    return None


def _ratio(a, b):
    return None if a is None or b is None else a / b


def _fmt(x, digits=2):
    return "n/a" if x is None else f"{x:.{digits}f}"


def targets(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, limit, met) for the targets of issue 4."""
    out = []
    rows = results.get("throughput", [])
    shape = results["settings"]["target_shape"]
    for mode in ("decode",):
        sel = dict(shape=shape, mode=mode, rank=16)
        kmax = max((r["k"] for r in rows if r["shape"] == shape and r["mode"] == mode and r["rank"] == 16), default=None)
        if kmax is not None:
            mixed = _median(rows, **sel, k=kmax, method="adapterkit_mixed")
            merged = _median(rows, **sel, k=kmax, method="merged")
            peft = _median(rows, **sel, k=kmax, method="peft_mixed")
            r1 = _ratio(mixed, merged)
            out.append((f"{shape} decode r=16 k={kmax}: adapterkit mixed / single merged", _fmt(r1), "≤ 1.30",
                        None if r1 is None else r1 <= 1.3))
            r2 = _ratio(peft, mixed)
            out.append((f"{shape} decode r=16 k={kmax}: PEFT adapter_names= / adapterkit mixed", _fmt(r2), "≥ 3.0",
                        None if r2 is None else r2 >= 3.0))
        kmin = min((r["k"] for r in rows if r["shape"] == shape and r["mode"] == mode and r["rank"] == 16), default=None)
        if kmin is not None:
            r3 = _ratio(_median(rows, **sel, k=kmin, method="unmerged"), _median(rows, **sel, k=kmin, method="merged"))
            out.append((f"{shape} decode r=16: single unmerged / single merged", _fmt(r3), "≤ 1.10",
                        None if r3 is None else r3 <= 1.10))
    ours = results.get("resident", {}).get("adapterkit")
    if ours:
        cps = {int(k): v for k, v in ours["checkpoints"].items()}
        first, last = cps.get(1), cps.get(max(cps))
        n = max(cps)
        r4 = _ratio(last["load_window_median_s"], first["load_s"])
        out.append((f"load_adapter: {n}th (median of the last 10) / 1st", _fmt(r4), "≤ 1.5", None if r4 is None else r4 <= 1.5))
        r5 = _ratio(last["load_window_median_s"], last["bare_load_file_s"])
        out.append((f"load_adapter: {n}th / bare safetensors load_file", _fmt(r5), "≤ 3.0", None if r5 is None else r5 <= 3.0))
        r6 = _ratio(last["rss_delta_bytes"], last["tensor_bytes"])
        out.append((f"resident RSS with {n} adapters / their tensor bytes", _fmt(r6, 3), "≤ 1.10", None if r6 is None else r6 <= 1.10))
    return out


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = ["# adapterkit benchmark report", "",
             f"Command: `{s['command']}` (profile **{s['profile']}**), {s['started']}, "
             f"torch {s['torch']} / transformers {s['transformers']} / peft {s['peft']}, "
             f"`torch.set_num_threads({s['threads']})` on a {s['cpu_count']}-core CPU, float32, random weights "
             "at real shapes. Every time is the median of interleaved repeats after warm-up; ratios compare "
             "methods measured in the same rounds. Wall time of the run: "
             f"{results.get('wall_s', 0):.0f} s.", ""]
    lines += ["## Targets (issue 4)", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for name, measured, limit, met in targets(results):
        lines.append(f"| {name} | {measured} | {limit} | {'yes' if met else ('n/a' if met is None else '**no**')} |")
    lines += ["", "## Settings that ran", ""]
    for part in s["parts"]:
        lines.append(f"- {part}")
    rows = results.get("throughput", [])
    for shape in dict.fromkeys(r["shape"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["shape"] == shape):
            sub = [r for r in rows if r["shape"] == shape and r["mode"] == mode]
            b, length = sub[0]["batch"], sub[0]["length"]
            what = f"one new token per row, KV cache {length}" if mode == "decode" else f"{length} tokens per row"
            lines += ["", f"## {shape}, {mode}: batch {b}, {what}", "",
                      "Milliseconds (median); in brackets, the ratio to single merged measured in the same rounds.", "",
                      "| rank | k | base | merged | unmerged | adapterkit mixed | PEFT adapter_names= | PEFT / adapterkit |",
                      "|---|---|---|---|---|---|---|---|"]
            for rank in sorted({r["rank"] for r in sub}):
                for k in sorted({r["k"] for r in sub if r["rank"] == rank}):
                    sel = dict(shape=shape, mode=mode, rank=rank, k=k)
                    merged = _median(rows, **sel, method="merged")

                    def cell(method):
                        t = _median(rows, **sel, method=method)
                        return "" if t is None else f"{t * 1e3:.1f} ({t / merged:.2f}×)"
                    ratio = _ratio(_median(rows, **sel, method="peft_mixed"), _median(rows, **sel, method="adapterkit_mixed"))
                    lines.append(f"| {rank} | {k} | {cell('base')} | {cell('merged')} | {cell('unmerged')} | "
                                 f"{cell('adapterkit_mixed')} | {cell('peft_mixed')} | {_fmt(ratio)}× |")
    resident = results.get("resident", {})
    if resident:
        lines += ["", "## Many resident adapters", "",
                  f"{s.get('resident_note', '')}", "",
                  "| library | adapters resident | load_adapter of that one (ms) | median of the last 10 loads (ms) | "
                  "bare load_file (ms) | set_adapter (µs) | RSS growth / tensor bytes |",
                  "|---|---|---|---|---|---|---|"]
        for lib, res in resident.items():
            for n, cp in sorted(((int(k), v) for k, v in res["checkpoints"].items())):
                lines.append(f"| {lib} | {n} | {cp['load_s'] * 1e3:.1f} | {cp['load_window_median_s'] * 1e3:.1f} | "
                             f"{cp['bare_load_file_s'] * 1e3:.2f} | {cp['set_adapter_s'] * 1e6:.1f} | "
                             f"{cp['rss_delta_bytes'] / cp['tensor_bytes']:.3f} |")
            if res["loaded"] < max(int(c) for c in s["resident_counts"]):
                lines.append(f"| {lib} | stopped at {res['loaded']} (time budget) | | | | | |")
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", "", notes]
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("throughput", [])
    panels = list(dict.fromkeys((r["shape"], r["mode"], r["rank"]) for r in rows))
    if not panels:
        return
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (shape, mode, rank) in zip(axes.flat, panels):
        sub = [r for r in rows if (r["shape"], r["mode"], r["rank"]) == (shape, mode, rank)]
        ks = sorted({r["k"] for r in sub})
        for method in ("base", "merged", "unmerged", "adapterkit_mixed", "peft_mixed"):
            pts = [(r["k"], r["median_s"] * 1e3) for r in sub if r["method"] == method]
            if not pts:
                continue
            if len(pts) == 1:  # measured once per rank: a flat line across k
                pts = [(k, pts[0][1]) for k in ks]
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distinct adapters in the batch (k)")
        ax.set_ylabel("ms per call")
        ax.set_title(f"{shape} {mode} r={rank}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("time per call vs distinct adapters in the batch (one line per method)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    report = out_dir / "REPORT.md"
    report.write_text(markdown(results))
    plot(results, out_dir / "time_vs_adapters.png")
    return report


if __name__ == "__main__":  # re-render the report and plot from a results.json
    import sys

    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.json"
    print(write_all(json.loads(source.read_text()), source.parent))
