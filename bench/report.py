"""Reports: the markdown tables and plots of mode bench and mode scale, and the README update."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import NOISY_CORES
from bench.machine import BENCH_DIR
from bench.scale import RSS_TARGET_MB

README_BEGIN = "<!-- latest-figures:begin -->"
README_END = "<!-- latest-figures:end -->"


def update_readme(markdown: str, begin: str, end: str) -> None:
    """Replace what bench/README.md holds between the markers ``begin`` and ``end``."""
    readme = BENCH_DIR / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text()
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{begin}\n{markdown}{end}{tail}")


def _fmt(s: dict, digits: int = 1) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def bench_markdown(result: dict[str, Any]) -> str:
    """Issue 13's targets for every model side by side, then each model's full table."""
    models = result.get("models") or {result["bench"]["inputs"].get("name", "model"): result["bench"]}
    lines = [
        f"Measured {result['meta']['date']} on {result['meta']['machine'].get('cpu_model', '?')}, "
        f"{result['meta']['machine'].get('cores_available')} cores; {result['meta']['args']['repeats']} repeats, "
        "median (min-max); ratios of medians, paired per repeat in brackets.",
        "",
        "| model | target | required | measured | paired per repeat | met |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"ort_flush_vs_noflush_model_only": "ORT fp32 with denormals flushed vs without, model only",
              "e2e_vs_ort_flush_model_only": "end to end vs ORT fp32 (flushed) model only",
              "e2e_vs_original_loop": "end to end vs original loop",
              "bf16_vs_fp32_model_only": "CPU bf16 (OpenVINO) vs ORT fp32, model only"}
    for name, b in models.items():
        checks = b.get("issue13", {})
        for key, label in labels.items():
            if key in checks:
                c = checks[key]
                met = "n/a" if c["met"] is None else "yes" if c["met"] else "**no**"
                required = "none for this model" if c["target"] is None else f">= {c['target']}x"
                lines.append(f"| {name} | {label} (batch {checks['batch_size']}) | {required} | "
                             f"{c['value']:.2f}x | {_fmt(c['paired'], 2)} | {met} |")
        cosine = checks.get("bf16_cosine_vs_fp32")
        if cosine:
            lines.append(f"| {name} | bf16 cosine to ORT fp32 on the model-only crops: min / median | "
                         f"(min >= 0.998 on trained weights) | "
                         f"{cosine['min']:.5f} / {cosine['median']:.5f} | | |")
    for name, b in models.items():
        lines += ["", f"### {name}", "", _model_markdown(result, b)]
        if "baseline" in b:
            lines += ["", baseline_markdown(b)]
    return "\n".join(lines) + "\n"



def baseline_markdown(b: dict[str, Any]) -> str:
    """This checkout against the baseline: medians per tree and the ratio new / baseline."""
    base = b["baseline"]
    lines = [f"Against the baseline `{base['rev']}` ({base['commit'][:10]}), the same children run alternately "
             "from both trees: median (min-max); new / baseline of the medians, paired per repeat in brackets.",
             "",
             "| measure | new | baseline | new / baseline | paired per repeat |",
             "|---|---|---|---|---|"]

    def row(label: str, c: dict[str, Any]) -> None:
        ratio = c["ratio_new_over_baseline"]
        lines.append(f"| {label} | {_fmt(c['new'])} | {_fmt(c['baseline'])} | "
                     f"{f'{ratio:.2f}x' if ratio else 'n/a'} | {_fmt(c['paired'], 2)} |")

    for backend, per_size in base["model_only_img_per_s"].items():
        for size, c in per_size.items():
            row(f"model only, {backend}, batch {size} (img/s)", c)
    row("**pipeline end to end, steady state** (rows/s)", base["e2e_steady_rows_per_s"])
    return "\n".join(lines)


def _model_markdown(result: dict[str, Any], b: dict[str, Any]) -> str:
    fmt = _fmt

    def mb(s: dict) -> str:
        return f"{s['max']:.0f}" if s and s.get("max") is not None else "n/a"

    loop = b["original_loop"]["crops_per_s"]["median"]
    lines = [
        f"Model {b['inputs']['arch']} 256x128, weights: {b['inputs']['weights']}; {b['inputs']['crops']}.",
        "",
        "| mode | throughput (per s) | vs original loop | peak RSS (MB) |",
        "|---|---|---|---|",
        f"| original per-crop loop (torch eager, 1 crop per forward) | {fmt(b['original_loop']['crops_per_s'])} | 1.00x | "
        f"{mb(b['original_loop']['peak_rss_mb'])} |",
    ]
    for backend, data in b["model_only"].items():
        for size, s in data["img_per_s"].items():
            lines.append(f"| model only, {backend} ({data['threads']} threads), batch {size} | {fmt(s)} | "
                         f"{s['median'] / loop:.2f}x | {mb(data['peak_rss_mb'])} |")
    e = b["e2e"]
    lines += [
        f"| **pipeline end to end, steady state** (DirectRunner, {e['rows']} rows) | **{fmt(e['steady_rows_per_s'])}** | "
        f"**{b['ratios']['e2e_steady_vs_original_loop']['of_medians']:.2f}x** | {mb(e['peak_rss_mb'])} |",
        f"| pipeline end to end, whole run incl. start-up | {fmt(e['overall_rows_per_s'])} | "
        f"{b['ratios']['e2e_overall_vs_original_loop']['of_medians']:.2f}x | |",
        "",
        f"Pipeline start-up (process start to first encoded row): {fmt(e['startup_s'])} s "
        f"(imports {fmt(e['import_s'])} s, input and weights checks {fmt(e['plan_s'])} s, "
        f"runner start + model load + first batch {fmt(e['first_row_after_run_s'])} s); "
        f"tail (last encoded row to job done): {fmt(e['tail_s'], 2)} s; "
        f"second half of the steady interval alone: {fmt(e['second_half_rows_per_s'])} rows/s; "
        f"RunInference batches: median {e['batch_size_median']['median']:.0f} rows.",
        "",
    ]
    t = b["targets"]
    r = b["ratios"]
    lines += [
        "| target | required | measured (ratio of medians) | paired per repeat, median (min-max) | met |",
        "|---|---|---|---|---|",
        f"| end to end vs original loop | >= {t['e2e_steady_vs_original_loop']['target']}x | "
        f"{t['e2e_steady_vs_original_loop']['value']:.2f}x | "
        f"{fmt(r['e2e_steady_vs_original_loop']['paired'], 2)} | {'yes' if t['e2e_steady_vs_original_loop']['met'] else '**no**'} |",
        f"| end to end vs best model-only ({r['e2e_steady_vs_best_model_only']['best']}) | "
        f">= {t['e2e_steady_vs_best_model_only']['target']}x | "
        f"{t['e2e_steady_vs_best_model_only']['value']:.2f}x | {fmt(r['e2e_steady_vs_best_model_only']['paired'], 2)} | "
        f"{'yes' if t['e2e_steady_vs_best_model_only']['met'] else '**no**'} |",
    ]
    if "stages" in b:
        s = b["stages"]
        lines += ["", f"Per-row cost outside the model (one core): CSV parse {s['csv_parse_ms_per_row']:.2f} ms, "
                      f"crop decode {s['decode_ms_per_row']:.2f} ms, resize + normalise {s['preprocess_ms_per_crop']:.2f} ms; "
                      f"resize + normalise on the backend's {s.get('worker_threads', '?')} worker threads: "
                      f"{s.get('preprocess_in_worker_threads_wall_ms_per_crop', float('nan')):.2f} ms of wall time per crop."]
    noisy = b["machine_load"]["noisy_runs"]
    if noisy:
        lines += ["", f"Machine not quiet during: {', '.join(noisy)} (other processes used more than "
                      f"{NOISY_CORES} cores on average; see machine_load in latest.json)."]
    return "\n".join(lines)


def bench_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = result["bench"]
    labels, medians, lows, highs, colours = [], [], [], [], []

    def add(label: str, s: dict, colour: str) -> None:
        labels.append(label)
        medians.append(s["median"])
        lows.append(s["median"] - s["min"])
        highs.append(s["max"] - s["median"])
        colours.append(colour)

    add("original loop (torch, 1 crop)", b["original_loop"]["crops_per_s"], "tab:gray")
    palette = {"torch": "tab:orange", "onnxruntime": "tab:blue"}
    for backend, data in b["model_only"].items():
        for size, s in data["img_per_s"].items():
            add(f"model only: {backend} bs {size}", s, palette.get(backend, "tab:purple"))
    add("pipeline e2e: steady", b["e2e"]["steady_rows_per_s"], "tab:green")
    add("pipeline e2e: whole run", b["e2e"]["overall_rows_per_s"], "tab:olive")

    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(14, 0.42 * len(labels) + 2.2),
                                     gridspec_kw={"width_ratios": [3, 1.3]})
    y = list(range(len(labels)))[::-1]
    ax.barh(y, medians, xerr=[lows, highs], color=colours, capsize=3)
    ax.set_yticks(y, labels)
    loop = b["original_loop"]["crops_per_s"]["median"]
    best = b["best_model_only"]["img_per_s"]["median"]
    vs_loop = b["targets"]["e2e_steady_vs_original_loop"]["target"]
    vs_model = b["targets"]["e2e_steady_vs_best_model_only"]["target"]
    ax.axvline(vs_loop * loop, ls="--", color="tab:red", label=f"target: {vs_loop}x original loop")
    ax.axvline(vs_model * best, ls=":", color="tab:red", label=f"target: {vs_model}x best model-only")
    for yy, m, high in zip(y, medians, highs):
        ax.text(m + high, yy, f"  {m:.1f}", va="center", fontsize=8)
    ax.set_xlabel("crops (rows) per second: median, bars = min..max")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{b['inputs']['arch']} fp32, {result['meta']['machine'].get('cores_available')} CPU cores, "
                 f"{result['meta']['date'][:10]}", fontsize=10)
    mem_labels = ["original loop"] + [f"model {k}" for k in b["model_only"]] + ["pipeline e2e"]
    mem = [b["original_loop"]["peak_rss_mb"]["max"]] + [d["peak_rss_mb"]["max"] for d in b["model_only"].values()] + \
          [b["e2e"]["peak_rss_mb"]["max"]]
    ym = list(range(len(mem_labels)))[::-1]
    ax_mem.barh(ym, mem, color="tab:cyan")
    ax_mem.set_yticks(ym, mem_labels)
    for yy, m in zip(ym, mem):
        ax_mem.text(m, yy, f" {m:.0f}", va="center", fontsize=8)
    ax_mem.set_xlabel("peak RSS per process (MB, max of repeats)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def scale_markdown(result: dict[str, Any]) -> str:
    s = result["scale"]
    v = s["verification"]
    return "\n".join([
        f"Measured {result['meta']['date']}: {s['input']['rows']} rows ({s['input']['bad_rows']} bad: "
        f"{s['input']['bad_cell_kinds_used']} kinds of bad cell, {s['input']['broken_csv_records']} broken CSV records, "
        f"{s['input']['widening_values']} later values that widen a column, rows kept) in {s['input']['files']} CSV shards "
        f"({s['input']['bytes'] / 2**30:.2f} GiB), model {s['arch']}.",
        "",
        "| wall time | rows/s | peak RSS, whole process tree | rows in = features + errors | per-reason counts | error rows hold original data |",  # noqa: E501 (a table row)
        "|---|---|---|---|---|---|",
        f"| {s['wall_s']:.0f} s | {s['rows_per_s']:.0f} | {s['peak_tree_rss_mb']:.0f} MB "
        f"({'<' if s['rss_target_met'] else '**>=**'} {s['rss_target_mb'] / 1024:g} GB target) | {v['rows_in']} = {v['feature_rows']} + {v['error_rows']}: "  # noqa: E501 (a table row)
        f"{'yes' if v['rows_in_equals_features_plus_errors'] else '**no**'} | "
        f"{'match' if v['per_reason_counts_match'] else '**differ**'} | "
        f"{'yes' if v['every_error_row_holds_its_original_data'] else '**no**'} |",
        "",
        "Errors per reason: " + ", ".join(f"{k}={n}" for k, n in v["errors_per_reason"].items()) + ".",
        *(["", "Problems: " + "; ".join(v["problems"][:10])] if v["problems"] else []),
    ]) + "\n"


def scale_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["scale"]
    times, rss = zip(*s["rss_timeline_mb"]) if s["rss_timeline_mb"] else ((0,), (0,))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(times, rss, color="tab:blue")
    ax.axhline(RSS_TARGET_MB, ls="--", color="tab:red", label=f"target: {RSS_TARGET_MB / 1024:g} GB")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("RSS of the process tree (MB)")
    ax.set_title(f"{s['input']['rows']} rows ({s['input']['bad_rows']} bad), {s['arch']}, DirectRunner: "
                 f"{s['wall_s']:.0f}s, peak {s['peak_tree_rss_mb']:.0f} MB", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

