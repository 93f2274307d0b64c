"""Benchmark reports: bench.json (schema in benchmarks/README.md), summary.md,
PNG plots, and the NVML time series."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from textwrap import fill

SCHEMA = "gpucomp.bench/1"
STAGES = ("inference", "composite", "copy", "save")
ENGINE_BACKENDS = ("gpu", "gpu-sim")


def bounding_stage(backend: str, stages_ms: dict, workers: int) -> dict | None:
    """Which stage bounds a run, from its busy time per frame: the one whose
    frames take longest once the stages that run side by side are set apart.
    On the GPU engine the model and the composite kernel share one stream
    ("inference"), the copy engine moves finished frames alone ("copy"), and
    `workers` threads encode ("encoding": save time over the workers); on the
    cpu backend one thread infers and the workers composite and encode. None
    for the seed backend, which runs its stages one after another."""
    if backend == "seed":
        return None
    ms = lambda stage: stages_ms.get(stage, 0.0)  # noqa: E731
    if backend in ENGINE_BACKENDS:
        candidates = {"inference": ms("inference") + ms("composite"), "copy": ms("copy"),
                      "encoding": ms("save") / workers}
    else:
        candidates = {"inference": ms("inference"), "encoding": (ms("composite") + ms("save")) / workers}
    stage = max(candidates, key=candidates.get)
    return {"stage": stage, "ms_per_frame": candidates[stage], "ms_per_frame_by_stage": candidates}


def summarize(records: list) -> list[dict]:
    """One row per (model, backend, batch, workers): medians over repeats, with min and max."""
    groups: dict[tuple, list] = {}
    for r in records:
        groups.setdefault((r.model, r.backend, r.batch, r.workers), []).append(r)
    rows = []
    for (model, backend, batch, workers), runs in groups.items():
        fps = [r.fps for r in runs]
        first = runs[0]
        stages = {s: statistics.median(r.stages.get(s, {}).get("ms_per_frame", 0.0) for r in runs) for s in STAGES}
        rows.append({
            "model": model, "backend": backend, "label": first.label, "batch": batch, "workers": workers,
            "repeats": len(runs), "frames": first.frames,
            "seconds": statistics.median(r.seconds for r in runs),
            "fps": {"median": statistics.median(fps), "min": min(fps), "max": max(fps)},
            "stages_ms": stages, "bound": bounding_stage(backend, stages, workers),
            "identical": first.identical, "compared": first.compared, "max_abs_diff": first.max_abs_diff,
            "nvml": first.nvml,
        })
    return rows


def _fmt(value, digits=1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    gpu = m["gpu"]
    cfg = report["config"]
    lines = [f"# gpucomp benchmark, {report['created']}", "",
             f"- machine: {m['cpu']}, {m['cores']} cores, {(m['ram_bytes'] or 0) / 2**30:.0f} GiB RAM, host {m['host']}",
             f"- GPU: {gpu['name'] + ', driver ' + gpu['driver'] if gpu else 'unavailable: ' + str(m['gpu_unavailable'])}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
             f"- data: {cfg['data']} ({cfg['frames']} frames {cfg['size']}), model: {cfg['model']}",
             f"- command: `{' '.join(report['command'])}`", "",
             "## End to end", "",
             f"Median of {cfg['repeat']} repeats (min-max); warm-up excluded. Stage columns are busy time per frame "
             "(stages overlap); `bound by` is the stage whose frames take longest once stages that run side by side "
             "are set apart (encoding: save time over the workers). `identical` compares decoded frames with the "
             "first backend's.", "",
             "| backend | batch | workers | total s | FPS | inference ms | composite ms | copy ms | save ms | bound by | "
             "inference-only FPS | composite-only FPS | identical |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    iso = report.get("isolation", {})
    for row in report["summary"]:
        if row["model"] != "unet328" or row.get("grid"):
            continue
        b = row["backend"]
        inf_only = iso.get(b, {}).get("inference_only", {}).get("fps", {}).get("median")
        comp = iso.get(b, {}).get("composite_only", {})
        comp_fps = comp["cpu_threads"][-1]["fps"]["median"] if "cpu_threads" in comp else comp.get("fps", {}).get("median")
        ident = "reference" if row["identical"] is None else f"{row['identical']}/{row['compared']}" + (
            f" (max diff {row['max_abs_diff']})" if row["identical"] != row["compared"] else "")
        st, bound = row["stages_ms"], row.get("bound")
        bound_by = f"{bound['stage']} ({bound['ms_per_frame']:.2f} ms)" if bound else "—"
        lines.append(f"| {row['label']} | {row['batch']} | {row['workers']} | {row['seconds']:.2f} | "
                     f"{row['fps']['median']:.1f} ({row['fps']['min']:.1f}-{row['fps']['max']:.1f}) | "
                     f"{st['inference']:.2f} | {st['composite']:.2f} | {st.get('copy', 0.0):.2f} | {st['save']:.2f} | "
                     f"{bound_by} | {_fmt(inf_only)} | {_fmt(comp_fps)} | {ident} |")
    for b, reason in report["unavailable"].items():
        lines.append(f"| {b} | | | | unavailable: {reason} | | | | | | | | |")
    ratios = report.get("ratios", {})
    if ratios:
        lines += ["", "## Ratios (same run)", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in ratios.items()]
    if iso:
        lines += ["", "## Stage isolation", "", "Composite only, fixed predictions (GB/s = output frame bytes per second):", "",
                  "| where | threads / batch | frames/s | GB/s | copy GB/s | vs copy |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for b, res in iso.items():
            comp = res.get("composite_only", {})
            for t in comp.get("cpu_threads", []):
                lines.append(f"| cpu (OpenCV) | {t['threads']} threads | {t['fps']['median']:.1f} | {t['gbps']:.2f} | | |")
            if "fps" in comp:
                lines.append(f"| {b} kernel | batch {comp['batch']} | {comp['fps']['median']:.1f} | "
                             f"{comp['gbps']['median']:.2f} | {comp['copy_gbps']['median']:.2f} | {comp['ratio_to_copy']:.2f} |")
        lines += ["", "| backend | inference-only FPS |", "| --- | ---: |"]
        for b, res in iso.items():
            lines.append(f"| {b} | {res['inference_only']['fps']['median']:.1f} |")
    enc = report.get("encode_only")
    if enc:
        lines += ["", f"Encode only ({enc['format']}, {enc['workers']} workers): {enc['fps']['median']:.1f} frames/s "
                  f"({enc['fps']['min']:.1f}-{enc['fps']['max']:.1f})"]
    exact = [r for r in report["summary"] if r["model"] == "echo"]
    if exact:
        lines += ["", "## Exactness (echo model: identical predictions on every device)", "",
                  "| backend | identical frames |", "| --- | --- |"]
        for r in exact:
            ident = "reference" if r["identical"] is None else f"{r['identical']}/{r['compared']}"
            lines.append(f"| {r['label']} | {ident} |")
    grid = [r for r in report["summary"] if r.get("grid")]
    if grid:
        lines += ["", "## Grid (end-to-end FPS, median)", ""]
        for b in sorted({r["backend"] for r in grid}):
            cells = [r for r in grid if r["backend"] == b]
            workers = sorted({r["workers"] for r in cells})
            lines += [f"{b}:", "", "| batch \\ workers | " + " | ".join(map(str, workers)) + " |",
                      "| --- |" + " ---: |" * len(workers)]
            for batch in sorted({r["batch"] for r in cells}):
                by_w = {r["workers"]: r["fps"]["median"] for r in cells if r["batch"] == batch}
                lines.append(f"| {batch} | " + " | ".join(_fmt(by_w.get(w)) for w in workers) + " |")
            lines.append("")
    if report.get("speech"):
        from .speech import markdown as speech_markdown

        lines += speech_markdown(report["speech"])
    nv = report["nvml"]
    lines += ["", "## NVML", ""]
    if not nv["available"]:
        lines.append(f"unavailable: {nv['reason']}")
    else:
        lines += [f"{nv['samples']} samples at {nv['rate_hz']:.0f} Hz; series in {nv['series_file']}", "",
                  "| run | GPU util % mean/p95 | mem util % | mem used MiB | power W | SM MHz | PCIe rx/tx MB/s | temp C |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in report["summary"]:
            s = row.get("nvml") or {}
            if not s.get("samples"):
                continue

            def mp(k, d=0):
                return f"{s[k]['mean']:.{d}f}/{s[k]['p95']:.{d}f}" if s.get(k) else "n/a"
            lines.append(f"| {row['backend']} b{row['batch']} w{row['workers']} ({row['model']}) | {mp('gpu_util_pct')} | "
                         f"{mp('mem_util_pct')} | {mp('mem_used_mib')} | {mp('power_w')} | {mp('sm_clock_mhz')} | "
                         f"{mp('pcie_rx_mbps')} / {mp('pcie_tx_mbps')} | {mp('temp_c')} |")
    return "\n".join(lines) + "\n"


def write_nvml_series(path: Path, sampler):
    from ..core.telemetry import NVML_FIELDS

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s",) + NVML_FIELDS)
        w.writerows(sampler.samples)


def plots(report: dict, out: Path, sampler=None) -> list[str]:
    """PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    main = [r for r in report["summary"] if r["model"] == "unet328" and not r.get("grid")]
    unavailable = report.get("unavailable") or {}

    def mark_unavailable(ax, labels: list[str]):
        """An empty, labelled slot per backend that could not run, with the reason under the plot."""
        for name in unavailable:
            labels.append(f"{name}\n(unavailable)")
            ax.bar([labels[-1]], [0])
        if unavailable:
            reasons = "; ".join(f"{name}: {why}" for name, why in unavailable.items())
            ax.figure.text(0.01, 0.01, fill(reasons, 140), fontsize=7, va="bottom", color="#8c1c13")

    if main:
        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [r["backend"] for r in main]
        med = [r["fps"]["median"] for r in main]
        err = [[m - r["fps"]["min"] for m, r in zip(med, main)], [r["fps"]["max"] - m for m, r in zip(med, main)]]
        ax.bar(labels, med, yerr=err, capsize=4, color="#4c72b0")
        mark_unavailable(ax, labels)
        ax.set_ylabel("frames/s (median, min-max)")
        ax.set_title("End-to-end throughput by backend")
        fig.tight_layout(rect=(0, 0.08 if unavailable else 0, 1, 1))
        fig.savefig(out / "fps_by_backend.png", dpi=110)
        plt.close(fig)
        written.append("fps_by_backend.png")

        fig, ax = plt.subplots(figsize=(8, 4))
        labels = [r["backend"] for r in main]
        bottom = [0.0] * len(main)
        for stage, color in zip(STAGES, ("#4c72b0", "#dd8452", "#8172b2", "#55a868")):
            vals = [r["stages_ms"][stage] for r in main]
            ax.bar(labels, vals, bottom=bottom, label=stage, color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
        mark_unavailable(ax, labels)
        ax.set_ylabel("busy ms per frame")
        ax.set_title("Stage breakdown (stages overlap in time)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars, never on them
        fig.tight_layout(rect=(0, 0.08 if unavailable else 0, 1, 1))
        fig.savefig(out / "stage_breakdown.png", dpi=110)
        plt.close(fig)
        written.append("stage_breakdown.png")

    grid = [r for r in report["summary"] if r.get("grid")]
    if grid:
        backends = sorted({r["backend"] for r in grid})
        fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.5), squeeze=False)
        for ax, b in zip(axes[0], backends):
            cells = [r for r in grid if r["backend"] == b]
            workers = sorted({r["workers"] for r in cells})
            batches = sorted({r["batch"] for r in cells})
            width = 0.8 / len(batches)
            for k, batch in enumerate(batches):
                by_w = {r["workers"]: r["fps"]["median"] for r in cells if r["batch"] == batch}
                ax.bar([i + k * width for i in range(len(workers))], [by_w.get(w, 0) for w in workers], width,
                       label=f"batch {batch}")
            ax.set_xticks([i + width * (len(batches) - 1) / 2 for i in range(len(workers))], [str(w) for w in workers])
            ax.set_xlabel("workers")
            ax.set_ylabel("frames/s")
            ax.set_title(f"{b}: batch x workers")
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(out / "grid_fps.png", dpi=110)
        plt.close(fig)
        written.append("grid_fps.png")

    if sampler is not None and sampler.samples:
        import numpy as np

        data = np.array(sampler.samples)
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
        ax1.plot(data[:, 0], data[:, 1], label="GPU util %")
        ax1.plot(data[:, 0], data[:, 2], label="memory util %")
        ax1.set_ylim(0, 105)
        ax1.legend(loc="upper right", fontsize=8)
        ax2.plot(data[:, 0], data[:, 4], label="power W", color="#c44e52")
        ax2.plot(data[:, 0], data[:, 6], label="PCIe rx MB/s", color="#8172b2")
        ax2.plot(data[:, 0], data[:, 7], label="PCIe tx MB/s", color="#937860")
        ax2.legend(loc="upper right", fontsize=8)
        ax2.set_xlabel("seconds")
        for run in report["runs"]:
            for ax in (ax1, ax2):
                ax.axvspan(run["start"], run["end"], alpha=0.08, color="grey")
            ax1.text(run["start"], 100, f"{run['backend']}#{run['repeat']}", fontsize=6, rotation=90, va="top")
        ax1.set_title("NVML timeline (shaded: timed runs)")
        fig.tight_layout()
        fig.savefig(out / "nvml_timeline.png", dpi=110)
        plt.close(fig)
        written.append("nvml_timeline.png")
    return written


def write_json(report: dict, path: Path):
    path.write_text(json.dumps(report, indent=2, default=str))


def write_result(folder: Path | None, stem: str, data: dict, lines: list[str]):
    """Print a result's Markdown lines and, given a folder, keep them and the data as <stem>.md / <stem>.json."""
    print("\n".join(lines))
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(data, folder / f"{stem}.json")
        (folder / f"{stem}.md").write_text("\n".join(lines) + "\n")
