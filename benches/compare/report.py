"""Reports of the peer comparison: Markdown table, SVG plot, raw JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
from pathlib import Path

import atomic

REPO = Path(__file__).resolve().parents[2]

ENGINE_LABELS = {
    "ours": "repvgg-rs (ours)",
    "onnxruntime": "ONNX Runtime",
    "openvino": "OpenVINO",
    "ncnn": "ncnn",
    "tract": "tract",
    "ours-int8": "repvgg-rs INT8 (ours)",
    "onnxruntime-int8": "ONNX Runtime INT8",
    "openvino-int8": "OpenVINO INT8 (NNCF)",
    "ours-bf16": "repvgg-rs BF16 (ours)",
    "openvino-default": "openvino-default",
    "ours-avx2": "repvgg-rs held to AVX2 (ours)",
    "openvino-avx2": "OpenVINO held to AVX2",
    "tract-avx2": "tract held to AVX2",
}
# Engines whose precision is the engine's own choice: their label carries what they reported.
REPORTED_PRECISION = ("openvino-default",)


def engine_label(name: str, results: list[dict]) -> str:
    """The report's name for an engine; openvino-default's with the precision OpenVINO reported,
    e.g. `openvino-default (bf16)` (several if the configurations differ)."""
    label = ENGINE_LABELS.get(name, name)
    if name in REPORTED_PRECISION:
        hints = sorted({r["engines"][name]["precision"]["hint"] for r in results
                        if "precision" in r.get("engines", {}).get(name, {})})
        if hints:
            label += f" ({'/'.join(hints)})"
    return label


def _agreement_shown(entry: dict) -> bool:
    """INT8 and bf16 engines show top-1 match beside their time (FP32 ones agree to 1e-4)."""
    return bool(entry.get("quantized") or entry.get("reduced_precision")) and "top1_match" in entry


def command_line(script: str, argv: list[str]) -> str:
    """How to re-run `script` (a file of this folder) with `argv`, from the repository root."""
    args = [os.path.relpath(script, REPO)] + argv
    return "/tmp/peers/bin/python " + " ".join(shlex.quote(a) for a in args)


def caches(m: dict) -> str:
    """The cache sizes of `machine()`, e.g. `L1d 64 KiB (2 instances), L2 2 MiB (...)`."""
    return ", ".join(f"{k.replace(' cache', '')} {v}" for k, v in m.get("caches", {}).items())


def machine() -> dict:
    """CPU model, core count and caches from lscpu, plus the kernel."""
    info: dict = {"kernel": platform.release()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    info["model"] = fields.get("Model name", "?")
    info["cpus"] = fields.get("CPU(s)", "?")
    info["threads_per_core"] = fields.get("Thread(s) per core", "?")
    info["hypervisor"] = fields.get("Hypervisor vendor")
    info["caches"] = {k: fields[k] for k in ("L1d cache", "L1i cache", "L2 cache", "L3 cache") if k in fields}
    flags = fields.get("Flags", "").split()
    info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni") if f in flags]
    return info


def cpu_usage(interval: float = 1.0) -> list[tuple[float, str]]:
    """(percent of one core, "name (pid N)") of every other process over the next `interval` s.

    Sampled from /proc twice, so it tells what runs right now, unlike `ps`'s lifetime
    averages. Sorted busiest first.
    """
    import os
    import time

    def snapshot() -> dict[int, tuple[str, int]]:
        ticks = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            ticks[int(entry)] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
        return ticks

    before = snapshot()
    time.sleep(interval)
    after = snapshot()
    hz = os.sysconf("SC_CLK_TCK")
    usage = [
        (100.0 * (t - before[pid][1]) / hz / interval, f"{comm} (pid {pid})")
        for pid, (comm, t) in after.items()
        if pid != os.getpid() and pid in before
    ]
    return sorted(usage, reverse=True)


def busiest_processes(n: int = 3) -> list[str]:
    """The n busiest other processes over one second, as text, or that none is busy."""
    busy = [f"{name} {pct:.0f}%" for pct, name in cpu_usage() if pct >= 1.0][:n]
    return busy or ["none above 1% CPU"]


def wait_idle(max_wait_s: float, threshold_pct: float = 10.0, log=print) -> list[str]:
    """Wait (up to max_wait_s) until no other process uses threshold_pct% of a core or more.

    Returns the busiest processes of the last sample (what still ran if the wait timed out).
    """
    import time

    deadline = time.time() + max_wait_s
    while True:
        usage = cpu_usage()
        heavy = [f"{name} {pct:.0f}%" for pct, name in usage if pct >= threshold_pct]
        if not heavy or time.time() >= deadline:
            return [f"{name} {pct:.0f}%" for pct, name in usage if pct >= 1.0][:3] or ["none above 1% CPU"]
        log(f"  waiting for an idle machine: {'; '.join(heavy)}")
        time.sleep(5)


def _fmt(value, digits=2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _engines_in(results: list[dict]) -> list[str]:
    seen = []
    for r in results:
        for name in r.get("engines", {}):
            if name not in seen:
                seen.append(name)
    order = list(ENGINE_LABELS)
    return sorted(seen, key=lambda n: order.index(n) if n in order else len(order))


def _stats(entry: dict, hot: bool) -> dict | None:
    """The first-of-turn statistics of an engine entry, or its back-to-back (`hot`) ones."""
    if "median_ms" not in entry:
        return None
    return entry.get("hot") if hot else entry


def summary_table(results: list[dict], hot: bool = False) -> list[str]:
    """One row per configuration: every engine's median ms and its ratio to ours."""
    engines = _engines_in(results)
    head = "| configuration | rounds | other load | " + " | ".join(engine_label(e, results) for e in engines) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(engines)]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | - | - | aborted: {r.get('message', '')} |")
            continue
        cells = []
        for e in engines:
            entry = r["engines"].get(e, {})
            stats = _stats(entry, hot)
            if stats is None:
                cells.append(entry.get("error", "-"))
            elif e == "ours":
                cells.append(f"**{stats['median_ms']:.2f}**")
            else:
                flag = " ⚠" if entry.get("flagged") else ""
                top1 = (f", top-1 {entry['top1_match']:.2f}/{entry['top1_match_centered']:.2f}c"
                        if _agreement_shown(entry) else "")
                cells.append(f"{stats['median_ms']:.2f} ({stats['ratio']:.2f}x{top1}){flag}")
        t = r["timing"]
        noisy = " ⚠" if t.get("foreign_cores", 0.0) > 0.2 else ""
        lines.append(f"| {r['label']} | {t['rounds']} | {_fmt(t.get('foreign_cores'))}{noisy} | " + " | ".join(cells) + " |")
    return lines


def held_table(results: list[dict]) -> list[str]:
    """One row per configuration: the engines held to AVX2, each peer's ratio to ours held."""
    held = [e for e in _engines_in(results) if any("held" in r["engines"].get(e, {}) for r in results)]
    peers = [e for e in held if e != "ours-avx2"]
    lines = ["| configuration | " + " | ".join(engine_label(e, results) for e in held) + " |",
             "|---|" + "---:|" * len(held)]
    for r in results:
        if r["status"] != "ok":
            continue
        cells = []
        for e in held:
            entry = r["engines"].get(e, {})
            if "median_ms" not in entry:
                cells.append("refused: " + entry["error"] if "held" in entry else entry.get("error", "-"))
            elif e in peers and "ratio_avx2" in entry:
                cells.append(f"{entry['median_ms']:.2f} ({entry['ratio_avx2']:.2f}x)")
            else:
                cells.append(f"**{entry['median_ms']:.2f}**")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines


def config_table(r: dict) -> list[str]:
    """Full per-engine table for one configuration."""
    has_hot = any("hot" in e for e in r["engines"].values())
    has_eval = any("top1_match" in e for e in r["engines"].values())
    hot_head, hot_rule = (" hot median ms | hot peer/ours |", "---:|---:|") if has_hot else ("", "")
    eval_n = max((e.get("eval_inputs", 0) for e in r["engines"].values()), default=0)
    eval_head, eval_rule = ((f" top-1 match ({eval_n}) | centered top-1 | max rel err ({eval_n}) | centered rel err |",
                             "---:|---:|---:|---:|") if has_eval else ("", ""))
    lines = [
        "| engine | median ms | min ms | IQR ms | images/s | eff. GFLOP/s | peer/ours |" + hot_head
        + " CPU/wall | max abs diff | rel diff |" + eval_head + " notes |",
        "|---|---:|---:|---:|---:|---:|---:|" + hot_rule + "---:|---:|---:|" + eval_rule + "---|",
    ]
    for name in _engines_in([r]):
        e = r["engines"][name]
        label = engine_label(name, [r])
        if "median_ms" not in e:
            lines.append(f"| {label} |" + " - |" * (9 + 2 * has_hot + 4 * has_eval) + f" {e.get('error', '')} |")
            continue
        flag = " **flagged**" if e.get("flagged") else ""
        hot = f" {e['hot']['median_ms']:.2f} | {e['hot']['ratio']:.2f} |" if has_hot else ""
        notes = list(e.get("notes", []))
        v = e.get("held", {}).get("verified")
        if v:
            notes.append(f"arch_status: AVX-512 use in {v['avx512_threads']} of {v['threads']} thread(s) over the "
                         f"{v['window_s']} s it ran" + (" (by the ops named beyond the cap)" if v["avx512_threads"] else ""))
        agree = ((f" {e['top1_match']:.3f} | {e['top1_match_centered']:.3f} | {e['eval_rel_diff']:.1e} | "
                  f"{e['eval_rel_diff_centered']:.1e} |") if "top1_match" in e else " - | - | - | - |") if has_eval else ""
        lines.append(
            f"| {label} | {e['median_ms']:.2f} | {e['min_ms']:.2f} | {e['iqr_ms']:.2f} | "
            f"{e['images_per_s']:.1f} | {e['gflops']:.1f} | {e['ratio']:.2f} |{hot} {_fmt(e['cpu_util'])} | "
            f"{e['max_abs_diff']:.1e} | {e['rel_diff']:.1e}{flag} |{agree} {'; '.join(notes)} |"
        )
    return lines


def markdown(meta: dict, results: list[dict]) -> str:
    """The whole `latest.md`."""
    m = meta["machine"]
    caches_text = caches(m)
    versions = {}
    for r in results:
        for name, e in r.get("engines", {}).items():
            if "version" in e:
                versions.setdefault(name, e["version"])
    rounds_cut = [r for r in results if r["status"] == "ok" and r["timing"]["rounds"] < r["timing"]["requested_rounds"]]
    cfg0 = results[0]["config"] if results else {}
    out = [
        f"# repvgg-rs vs. peers, {meta['started']}",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {m.get('model', '?')}, {m.get('cpus', '?')} CPUs ({m.get('threads_per_core', '?')} thread(s) per core"
        + (f", {m['hypervisor']} guest" if m.get("hypervisor") else "") + f"), {caches_text}; "
        f"ISA {', '.join(m.get('isa', []))}; Linux {m.get('kernel', '?')}.",
        "",
        f"Load average before {tuple(round(v, 2) for v in meta['load_before'])}, after "
        f"{tuple(round(v, 2) for v in meta['load_after'])}; busiest processes before the run: "
        f"{'; '.join(meta.get('busy_before', []))}. Total time {meta['elapsed_s'] / 60:.1f} min.",
        "",
        "Engines: " + ", ".join(f"{engine_label(n, results)} {v}" for n, v in versions.items()) + ".",
        "",
        "## Method",
        "",
        "- Same network everywhere: the layer list comes from `repvgg info --json`; deterministic FP32 deploy weights "
        f"(numpy `default_rng(seed)`, seed {cfg0.get('seed', 0)}) are written as safetensors (ours), ONNX opset 17 "
        "(ONNX Runtime, OpenVINO, tract) and ncnn param/bin; the input is uniform in [-1, 1).",
        "- Numerics are checked before timing: max |peer - ours| over the logits, and that divided by max |ours| "
        "(`rel diff`). ONNX Runtime beyond 1e-4 relative aborts the configuration; other peers beyond it are flagged.",
        f"- Timing: {cfg0.get('warmup', '?')} warm-up runs per engine, then rounds of one turn per engine in a "
        f"rotating order with {cfg0.get('gap_ms', '?')} ms pauses (so the previous engine's spinning threads go idle); "
        f"a turn is {cfg0.get('burst', 1)} inference(s). "
        "Ours is the time `repvgg time` measures inside Rust; peers are `time.perf_counter()` around the single "
        "inference call on pre-built inputs.",
        "- `peer/ours` = peer median / our median (above 1: we are faster). Effective GFLOP/s = 2 x MACs "
        "(direct convolution, from `repvgg info`) x batch / median. `CPU/wall` = CPU time of the engine's process over "
        "the wall time of its timed calls, i.e. how many cores it kept busy.",
        "- Threads: ONNX Runtime intra-op T, inter-op 1, sequential, ORT_ENABLE_ALL; OpenVINO CPU with "
        "INFERENCE_NUM_THREADS=T, NUM_STREAMS=1, PERFORMANCE_HINT=LATENCY, INFERENCE_PRECISION_HINT=f32 (verified on the "
        "compiled model and on every Convolution/FullyConnected of its runtime graph); ncnn num_threads=T, fp32 "
        "storage and arithmetic, no Vulkan, Winograd (23/43/63) + sgemm + packing on; tract has no thread setting in "
        "its Python API and runs single-threaded. Each configuration runs in a fresh Python process with "
        "OMP_NUM_THREADS etc. = T.",
        "- ncnn has no batch axis: batch N is N single-image extractions inside one timed call.",
    ]
    calib = next((r["calibration"] for r in results if "calibration" in r), None)
    if calib:
        source = f"from {calib['file']}" if calib.get("file") else f"N(0, 1), numpy `default_rng({calib['seed']})`"
        out.append(
            f"- INT8 engines are quantized from the same {calib['inputs']} calibration inputs [1, 3, H, W] ({source}), "
            "each the way its docs teach: ONNX Runtime `quant_pre_process` then `quantize_static` (QDQ, per-channel "
            "s8 weights, u8 activations, MinMax; `reduce_range` only without VNNI) and the FP32 engine's session "
            "options; OpenVINO `nncf.quantize(model, nncf.Dataset(calibration))` with its defaults, compiled with "
            "the FP32 engine's thread settings and no precision hint (the runtime precision is read back and shown). "
            "They are not flagged by the 1e-4 limit.")
    bf16 = sorted({n for r in results for n, e in r.get("engines", {}).items() if e.get("reduced_precision")})
    if bf16:
        how = {"ours-bf16": "ours-bf16 runs `repvgg time --precision bf16` on the same FP32 weights",
               "openvino-default": "openvino-default is OpenVINO compiled with the FP32 engine's thread settings "
                                   "and no precision hint, its default (the precision hint, execution mode, runtime "
                                   "precision and oneDNN primitive it reports are in its notes)"}
        out.append(
            f"- bf16 engines ({', '.join(engine_label(n, results) for n in bf16)}): "
            + "; ".join(how[n] for n in bf16 if n in how) + ". They cannot meet the 1e-4 FP32 limit; they are "
            "flagged (⚠) when max |diff| exceeds 1e-2 x max(1, max |ours|), on the timing input or on the "
            "agreement inputs, and show top-1 match beside their time.")
    eval_n = max((e.get("eval_inputs", 0) for r in results for e in r.get("engines", {}).values()), default=0)
    if eval_n:
        out.append(
            f"- Agreement: every engine also runs {eval_n} held-out N(0, 1) inputs; `top-1 match` is the share whose "
            "arg-max equals ours (FP32), `max rel err` the max |peer - ours| over all their logits divided by max |ours|. "
            "With these synthetic weights the logits are dominated by an input-independent vector, so ours may "
            "predict one class for every input (then top-1 match is trivially 1); `centered` subtracts ours' mean "
            "logit vector over the inputs from both before taking the arg-max and before dividing by the max. "
            + "; ".join(f"{r['label']}: ours predicts {r['engines']['ours']['eval_distinct_top1']} distinct "
                        f"class(es), {r['engines']['ours']['eval_distinct_top1_centered']} centered"
                        for r in results if "eval_distinct_top1" in r.get("engines", {}).get("ours", {})) + ".")
    held = [n for n in _engines_in(results) if any("held" in r["engines"].get(n, {}) for r in results)]
    if held:
        envs = {n: next(r["engines"][n]["held"]["env"] for r in results if "held" in r["engines"].get(n, {}))
                for n in held}
        out.append(
            "- Held to AVX2 (" + ", ".join(engine_label(n, results) for n in held) + "): ours runs `repvgg time "
            "--isa avx2`; each held peer runs in a Python process of its own started with "
            + "; ".join(f"{n}: " + " ".join(f"{k}={v}" for k, v in envs[n].items() if k not in
                                              ("GLIBC_TUNABLES", "NPY_DISABLE_CPU_FEATURES"))
                        for n in held if n != "ours-avx2")
            + ", and every held process with GLIBC_TUNABLES and NPY_DISABLE_CPU_FEATURES keeping glibc and numpy "
            "off AVX-512. Checked twice: OpenVINO's oneDNN primitive types are read from its runtime graph and it "
            "refuses to start if a convolution / fully connected primitive is not avx2 or uni (the counts are in "
            "its notes); after timing, Linux's per-thread record of the last AVX-512 register use "
            "(/proc/PID/task/TID/arch_status) must show no thread of the held process using AVX-512 since its "
            "first inference, or its time is refused. The other engines run AVX-512 (and AMX where they choose).")
    if rounds_cut:
        out.append("- Rounds were cut to fit the per-configuration time budget in: "
                   + "; ".join(f"{r['label']} ({r['timing']['rounds']} of {r['timing']['requested_rounds']})"
                               for r in rounds_cut) + ".")
    burst = cfg0.get("burst", 1)
    if burst > 1:
        out.append(
            f"- Each turn is {burst} inferences back to back. `median` is the first of each turn, which starts "
            "after the other engines' turns (the engine has idled for ~100 ms or more: thread pools asleep, "
            f"caches cold); `hot median` is the other {burst - 1}, as in a back-to-back benchmark loop."
        )
    out += ["", "## Summary: median ms (peer/ours)", "",
            "`other load`: cores that other processes on the machine kept busy, on average, while the "
            "configuration was timed (0 on an idle machine; the machine has 2; ⚠ above 0.2: noisy). "
            "⚠ after a peer's time: its logits differ from ours by more than 1e-4 relative"
            + (" (bf16 engines: more than 1e-2 x max(1, max |ours|))." if bf16 else ".")
            + (" First inference of each turn (after idling)." if burst > 1 else ""), ""] + summary_table(results)
    if burst > 1:
        out += ["", "## Summary, back to back (hot): median ms (peer/ours)", ""] + summary_table(results, hot=True)
    if held:
        out += ["", "## Held to AVX2: median ms (peer held / ours held)", "",
                "The ratio is the held peer's median over ours held to AVX2 (above 1: we are faster), "
                "from the same interleaved rounds as the summary above.", ""] + held_table(results)
    out += ["", "![median latency per engine and configuration](latest.svg)", ""]
    for r in results:
        out += ["", f"## {r['label']}", ""]
        if r["status"] != "ok":
            out.append(f"Aborted: {r.get('message', '')}")
            continue
        t = r["timing"]
        out.append(
            f"{r['flops_per_image'] / 1e9:.3f} GFLOP per image; {t['rounds']} rounds in {t['timed_s']:.0f} s"
            f"{'' if r.get('attempts', 1) == 1 else ' (quietest of %d attempts)' % r['attempts']}; "
            f"load average {tuple(round(v, 2) for v in r['load_before'])} before; other processes: "
            f"{'; '.join(r.get('busy_before', ['?']))}; other processes kept "
            f"{t.get('foreign_cores', float('nan')):.2f} cores busy on average while timing. "
            + (f"Our `run` round trip through the pipe: {t['ours_roundtrip_median_ms']:.2f} ms median."
               if "ours_roundtrip_median_ms" in t else "")
        )
        out += [""] + config_table(r)
    return "\n".join(out) + "\n"


def plot(path: Path, results: list[dict]) -> None:
    """Grouped bars: median latency per engine per configuration, IQR whiskers, log scale.

    With --burst > 1 a black diamond on each bar marks the back-to-back (hot) median.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r["status"] == "ok"]
    engines = _engines_in(ok)
    width = 0.8 / max(len(engines), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(ok) + 2), 4.8))
    values, hot_label = [], "back-to-back (hot) median"
    for i, name in enumerate(engines):
        xs, med, lo, hi, hot_x, hot = [], [], [], [], [], []
        for j, r in enumerate(ok):
            e = r["engines"].get(name, {})
            if "median_ms" in e:
                xs.append(j - 0.4 + width * (i + 0.5))
                med.append(e["median_ms"])
                lo.append(e["median_ms"] - e["q1_ms"])
                hi.append(e["q3_ms"] - e["median_ms"])
                if "hot" in e:
                    hot_x.append(xs[-1])
                    hot.append(e["hot"]["median_ms"])
        values += med + hot
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=engine_label(name, ok))
        if hot:
            ax.scatter(hot_x, hot, marker="D", s=14, color="black", edgecolors="white", linewidths=0.5,
                       zorder=3, label=hot_label)
            hot_label = None  # one legend entry
    ax.set_xticks(range(len(ok)))
    ax.set_xticklabels([r["label"].replace(" ", "\n", 1) for r in ok], fontsize=8)
    if values and max(values) / max(min(values), 1e-9) > 20:
        ax.set_yscale("log")
    ax.set_ylabel("median latency per batch (ms)")
    int8_run = any(r["engines"][n].get("quantized") for r in ok for n in r["engines"])
    bf16_run = any(r["engines"][n].get("reduced_precision") for r in ok for n in r["engines"])
    kinds = ["FP32"] + ["INT8"] * int8_run + ["BF16"] * bf16_run
    kinds = ", ".join(kinds[:-1]) + " and " + kinds[-1] if len(kinds) > 1 else kinds[0]
    ax.set_title(f"RepVGG {kinds} CPU inference, lower is better")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(engines) + 1, 6), loc="upper center", bbox_to_anchor=(0.5, -0.14),
              frameon=False)
    fig.tight_layout()
    fmt = Path(path).suffix.lstrip(".") or "svg"
    atomic.write_with(path, lambda temp: fig.savefig(temp, format=fmt))
    plt.close(fig)


def write_all(out_dir: Path, meta: dict, results: list[dict], stem: str = "latest") -> list[Path]:
    """Write `<stem>.md`, `<stem>.svg` and `<stem>.json` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, svg, js = (out_dir / f"{stem}.{ext}" for ext in ("md", "svg", "json"))
    atomic.write_text(md, markdown(meta, results))
    plot(svg, results)
    atomic.write_text(js, json.dumps({"meta": meta, "results": results}, indent=1))
    return [md, svg, js]
