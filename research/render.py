"""The governance report as one self-contained HTML page: no scripts, no fonts or styles fetched, every
plot an SVG drawn by matplotlib and embedded as a data: URI (an <img> keeps each plot's ids and styles
to itself). It opens from a mail attachment or an air-gapped share exactly as it was written.

Every plot is drawn from `report["figures"]`, the same numbers `report.json` holds.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display; set before pyplot is imported
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

COLORS = {"champion": "#4c72b0", "challenger": "#dd8452"}
ROLES = ("champion", "challenger")
plt.rcParams.update({
    "svg.fonttype": "none",  # text stays text: smaller files, and the browser's own fonts draw it
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 100,
})  # fmt: skip


def _svg(fig: plt.Figure, name: str) -> str:
    # A fixed hash salt makes the SVG's generated ids, and so the file, the same on every run.
    with plt.rc_context({"svg.hashsalt": name}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue().encode()).decode()


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return format(x, spec)
    return html.escape(str(x))


def _pct(x: Any) -> str:
    return "–" if x is None else f"{x:.2%}"


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# --- plots --------------------------------------------------------------------------------------------


def _labels(report: dict[str, Any]) -> dict[str, str]:
    return {role: f"{role}: {report['models'][role]['label']}" for role in ROLES}


def plot_roc(report: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    names = _labels(report)
    for role in ROLES:
        roc = report["figures"]["roc"][role]
        a = report["discrimination"][role]["auc"]["estimate"]
        ax.plot(roc["fpr"], roc["tpr"], color=COLORS[role], label=f"{names[role]} (AUC {a:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate (goods flagged)", ylabel="true positive rate (bads flagged)",
           title="ROC, evaluation population")  # fmt: skip
    ax.legend(loc="lower right", fontsize=7)
    return fig


def plot_ks(report: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, role in zip(axes, ROLES, strict=True):
        c = report["figures"]["ks"][role]
        ks = report["discrimination"][role]["ks"]["estimate"]
        ax.step(c["threshold"], c["good_cdf"], where="post", color="#55a868", label="goods")
        ax.step(c["threshold"], c["bad_cdf"], where="post", color="#c44e52", label="bads")
        gaps = [g - b for g, b in zip(c["good_cdf"], c["bad_cdf"], strict=True)]
        i = max(range(len(gaps)), key=gaps.__getitem__)
        ax.vlines(c["threshold"][i], c["bad_cdf"][i], c["good_cdf"][i], color="black", lw=1.5)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow PD range would label every minor tick
        ax.set(title=f"{role}: KS {ks:.3f}", xlabel="PD threshold (log)")
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("cumulative share at or below the PD")
    return fig


def plot_reliability(report: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 4.5))
    names = _labels(report)
    hi_all = 0.0
    for role in ROLES:
        rows = report["figures"]["reliability"][role]
        x = [r["mean_pd"] for r in rows]
        yv = [r["default_rate"] for r in rows]
        err = [[max(r["default_rate"] - r["rate_low"], 0) for r in rows],
               [max(r["rate_high"] - r["default_rate"], 0) for r in rows]]  # fmt: skip
        ax.errorbar(x, yv, yerr=err, fmt="o-", ms=4, capsize=2, color=COLORS[role], label=names[role])
        hi_all = max(hi_all, *x, *(r["rate_high"] for r in rows))
    ax.plot([0, hi_all], [0, hi_all], color="grey", ls=":", lw=1, label="perfect calibration")
    # Square-root axes: the low-PD deciles get room, and a decile with no default (rate 0) still shows.
    for axis in (ax.set_xscale, ax.set_yscale):
        axis("function", functions=(np.sqrt, np.square))
    ax.set(xlabel="mean predicted PD (square-root scale)", ylabel="observed default rate (square-root scale)",
           title="Reliability: PD deciles, Jeffreys 95 % intervals")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_grades(report: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, role in zip(axes, ROLES, strict=True):
        rows = report["figures"]["grades"][role]
        names = [r["grade"] for r in rows]
        ax.bar(names, [r["share"] for r in rows], color=COLORS[role], alpha=0.35, label="share of applicants")
        ax2 = ax.twinx()
        tested = [r for r in rows if r["tested"]]
        ax2.plot([r["grade"] for r in tested], [r["default_rate"] for r in tested], "o-", color="#c44e52",
                 label="bad rate")  # fmt: skip
        ax2.plot([r["grade"] for r in tested], [r["mean_pd"] for r in tested], "s--", color="black", ms=3,
                 label="mean PD")  # fmt: skip
        ax2.set_yscale("log")
        ax.set(title=f"{role}: grades", xlabel="grade (1 = best)")
        if role == "challenger":
            ax2.set_ylabel("bad rate / PD (log)")
        ax2.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("share of applicants")
    fig.tight_layout()
    return fig


def plot_score_distribution(report: dict[str, Any]) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, role in zip(axes, ROLES, strict=True):
        d = report["figures"]["score_distribution"][role]
        x = range(len(d["bins"]))
        ax.bar([i - 0.2 for i in x], d["expected_share"], width=0.4, color="grey", label="development")
        ax.bar([i + 0.2 for i in x], d["actual_share"], width=0.4, color=COLORS[role], label="evaluation")
        ax.set_xticks(list(x), d["bins"], rotation=60, ha="right", fontsize=6)
        ax.set(title=f"{role}: PD deciles of development, PSI {d['value']:.3f}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("share of applicants")
    fig.tight_layout()
    return fig


def plot_csi(report: dict[str, Any]) -> plt.Figure:
    rows = report["figures"]["csi"]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(rows), 3) + 1.2))
    if rows:
        names = [r["characteristic"] for r in rows][::-1]
        values = [r["csi"] for r in rows][::-1]
        colors = ["#55a868" if v < 0.10 else "#dd8452" if v < 0.25 else "#c44e52" for v in values]
        ax.barh(names, values, color=colors)
    else:
        ax.text(0.5, 0.5, "no characteristics configured", ha="center", transform=ax.transAxes)
    for x, lab in ((0.10, "0.10"), (0.25, "0.25")):
        ax.axvline(x, color="grey", ls="--", lw=1)
        ax.text(x, 1.01, lab, transform=ax.get_xaxis_transform(), ha="center", fontsize=7)
    ax.set(xlabel="CSI, development -> evaluation", title="Champion's main characteristics")
    return fig


def plot_strategy(report: dict[str, Any]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 4))
    names = _labels(report)
    for role in ROLES:
        c = report["figures"]["strategy"][role]
        ax.plot(c["approval_rate"], c["bad_rate"], color=COLORS[role], label=names[role])
    s = report["figures"]["swap"]
    ax.axvline(s["approval_rate"], color="grey", ls="--", lw=1)
    ax.axhline(s["champion_bad_rate"], color="grey", ls="--", lw=1)
    ax.plot([s["approval_rate"]], [s["champion_bad_rate"]], "o", color=COLORS["champion"], ms=7,
            label="champion today")  # fmt: skip
    ax.plot([s["challenger_approval_at_champion_bad_rate"]], [s["champion_bad_rate"]], "^",
            color=COLORS["challenger"], ms=7, label="challenger at the champion's bad rate")  # fmt: skip
    ax.plot([s["approval_rate"]], [s["challenger_bad_rate_at_champion_approval"]], "v",
            color=COLORS["challenger"], ms=7, label="challenger at the champion's approval rate")  # fmt: skip
    ax.set(xlabel="approval rate (lowest PDs approved first)", ylabel="bad rate of the approved",
           title="Strategy curve")  # fmt: skip
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_swap(report: dict[str, Any]) -> plt.Figure:
    s = report["figures"]["swap"]
    groups = [("champion approves", s["approved"], s["champion_bad_rate"]),
              ("challenger approves", s["approved"], s["challenger_bad_rate_at_champion_approval"]),
              ("swapped in", s["swap_in"]["n"], s["swap_in"]["bad_rate"]),
              ("swapped out", s["swap_out"]["n"], s["swap_out"]["bad_rate"])]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colors = [COLORS["champion"], COLORS["challenger"], "#55a868", "#c44e52"]
    bars = ax.bar([g[0] for g in groups], [g[2] or 0 for g in groups], color=colors)
    for bar, (_, n, rate) in zip(bars, groups, strict=True):
        label = f"{rate:.2%}\nn={n:,}" if rate is not None else f"n={n:,}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7)  # fmt: skip
    ax.set(ylabel="bad rate", title=f"Swap sets at the champion's approval rate ({s['approval_rate']:.0%})")
    ax.margins(y=0.25)
    return fig


def plot_segments(report: dict[str, Any]) -> plt.Figure:
    rows = [
        r
        for r in report["figures"]["segments"]
        if r["champion_auc"] is not None and r["challenger_auc"] is not None
    ]
    fig, ax = plt.subplots(figsize=(7, 0.32 * max(len(rows), 3) + 1.2))
    names = [f"{r['dimension']}={r['segment']}{'' if r['judged'] else ' *'}" for r in rows][::-1]
    y = range(len(names))
    for off, role in ((-0.2, "champion"), (0.2, "challenger")):
        ax.barh([i + off for i in y], [r[f"{role}_auc"] for r in rows][::-1], height=0.4,
                color=COLORS[role], label=role)  # fmt: skip
    ax.set_yticks(list(y), names, fontsize=7)
    ax.set_xlim(0.5, 1.0)
    ax.set(xlabel="AUC (* too small to judge)", title="AUC by segment, evaluation population")
    ax.legend(fontsize=7, loc="lower right")
    return fig


PLOTS: dict[str, tuple[str, Callable[[dict[str, Any]], plt.Figure]]] = {
    "roc": ("ROC curves of both models", plot_roc),
    "ks": ("KS curves: cumulative PD distributions of goods and bads", plot_ks),
    "reliability": ("Reliability curves", plot_reliability),
    "grades": ("Master-scale grades: shares, bad rates and mean PDs", plot_grades),
    "score_distribution": ("PD distributions, development vs evaluation", plot_score_distribution),
    "csi": ("Characteristic stability (CSI)", plot_csi),
    "strategy": ("Approval rate against bad rate", plot_strategy),
    "swap": ("Swap sets", plot_swap),
    "segments": ("AUC by segment", plot_segments),
}


def _figure(report: dict[str, Any], key: str) -> str:
    title, draw = PLOTS[key]
    data = _svg(draw(report), key)
    return (f'<figure id="fig-{key}"><img alt="{html.escape(title)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{html.escape(title)} (data: <code>figures.{key}</code> in report.json)</figcaption></figure>")  # fmt: skip


# --- sections -----------------------------------------------------------------------------------------


def _value(v: Any) -> str:
    """A check's figure: a number, a flag, a list of names or a small dict of numbers."""
    if isinstance(v, dict):
        return ", ".join(f"{html.escape(k)} {_fmt(x, '.4g')}" for k, x in v.items())
    if isinstance(v, list):
        return html.escape(", ".join(map(str, v))) or "none"
    return _fmt(v, ".4g")


def _recommendation(r: dict[str, Any]) -> str:
    rec = r["recommendation"]
    rows = [[('<b class="pass">PASS</b>' if c["passed"] else '<b class="fail">FAIL</b>'), html.escape(c["check"]),
             _value(c["value"]), html.escape(c["threshold"]), html.escape(c["detail"])] for c in rec["checks"]]  # fmt: skip
    cls = "promote" if rec["decision"] == "promote" else "hold"
    return (f'<div class="decision {cls}">Recommendation: <b>{rec["decision"].upper()}</b> — {html.escape(rec["summary"])}</div>'
            + _table(["", "check", "figure", "threshold", "detail"], rows))  # fmt: skip


def _data(r: dict[str, Any]) -> str:
    d = r["data"]
    rows = [[html.escape(name), f"{d[name]['rows']:,}", f"{d[name]['defaults']:,}", _pct(d[name]["default_rate"]),
             html.escape(d[name]["what"])] for name in ("development", "evaluation")]  # fmt: skip
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in d["notes"])
    return (f"<p>Evaluation dataset <code>{html.escape(d['evaluation_dataset'])}</code> (content hash "
            f"<code>{d['evaluation_hash'][:16]}</code>); rows chosen by {html.escape(d['population'])}.</p>"
            + _table(["population", "applicants", "defaults", "default rate", "rows"], rows)
            + (f"<p><b>Notes</b></p><ul>{notes}</ul>" if notes else ""))  # fmt: skip


def _ci(ci: dict[str, float], spec: str = ".4f") -> str:
    return f"{ci['estimate']:{spec}} <span class=ci>[{ci['low']:{spec}}, {ci['high']:{spec}}]</span>"


def _discrimination(r: dict[str, Any]) -> str:
    d = r["discrimination"]
    lvl = r["policy"]["bootstrap"]["level"]
    rows = [[html.escape(role), _ci(d[role]["auc"]), _ci(d[role]["gini"]), _ci(d[role]["ks"]),
             _fmt(d["development_auc"][role])] for role in ROLES]  # fmt: skip
    rows.append(["challenger − champion", _ci(d["difference"]["auc"]), _ci(d["difference"]["gini"]),
                 _ci(d["difference"]["ks"]), "–"])  # fmt: skip
    dl = d["delong"]
    return (f"<p>Evaluation population; brackets: {lvl:.0%} stratified bootstrap intervals "
            f"({r['policy']['bootstrap']['n_boot']} paired resamples, seed {r['policy']['bootstrap']['seed']}).</p>"
            + _table(["model", "AUC", "Gini", "KS", "AUC, development rows"], rows)
            + f"<p><b>DeLong test</b> (Sun &amp; Xu's fast algorithm) of the AUC difference: "
            f"Δ = {dl['diff']:+.4f}, SE {dl['se']:.4f}, z = {dl['z']:.2f}, two-sided p = {dl['p_value']:.3g}, "
            f"one-sided p (challenger better) = {dl['p_value_greater']:.3g}, {lvl:.0%} CI "
            f"[{dl['ci_low']:+.4f}, {dl['ci_high']:+.4f}].</p>"
            + _figure(r, "roc") + _figure(r, "ks"))  # fmt: skip


def _calibration(r: dict[str, Any]) -> str:
    c = r["calibration"]
    rows = []
    for role in ROLES:
        hl = c[role]["hosmer_lemeshow"]
        rows.append([html.escape(role), _fmt(c[role]["brier"]), _pct(c[role]["mean_pd"]), _pct(c[role]["default_rate"]),
                     f"{hl['statistic']:.2f} ({hl['df']} df)", f"{hl['p_value']:.3g}"])  # fmt: skip
    return (_table(["model", "Brier", "mean PD", "default rate", "Hosmer–Lemeshow χ²", "HL p-value"], rows)
            + "<p>Hosmer–Lemeshow over PD deciles, referred to χ² with g degrees of freedom (out-of-sample "
            "data). Per-grade Jeffreys and binomial tests are in the grades section.</p>"
            + _figure(r, "reliability"))  # fmt: skip


def _grades(r: dict[str, Any]) -> str:
    g = r["grades"]
    out = [f"<p>Master scale <code>{html.escape(g['scale']['name'])}</code> v{html.escape(g['scale']['version'])}; "
           f"grades with fewer than {r['policy']['min_grade_count']} applicants are shown but not tested. "
           "Jeffreys and binomial p-values are one-sided: small means more defaults than the grade's mean PD predicts.</p>"]  # fmt: skip
    for role in ROLES:
        rows = [[html.escape(x["grade"]), f"{x['pd_from']:.2%} – {x['pd_to']:.2%}", f"{x['n']:,}", _pct(x["share"]),
                 f"{x['defaults']:,}", _pct(x["default_rate"]), _pct(x["mean_pd"]),
                 _fmt(x.get("jeffreys_p"), ".3g"), _fmt(x.get("binomial_p"), ".3g"),
                 ("rejected" if x.get("jeffreys_rejected") else "ok") if x["tested"] else "not tested"]
                for x in g[role]["table"]]  # fmt: skip
        mono = "monotone" if g[role]["monotone"] else "NOT monotone: " + "; ".join(g[role]["violations"])
        out.append(f"<h3>{html.escape(role)} — bad rates {html.escape(mono)}</h3>")
        out.append(_table(["grade", "PD band", "applicants", "share", "defaults", "bad rate", "mean PD",
                           "Jeffreys p", "binomial p", "PD test"], rows))  # fmt: skip
    out.append(_figure(r, "grades"))
    return "".join(out)


def _stability(r: dict[str, Any]) -> str:
    s = r["stability"]
    rows = [[html.escape(role), f"{s['score_psi'][role]['value']:.4f}", html.escape(s["score_psi"][role]["band"]),
             f"{s['grade_psi'][role]:.4f}"] for role in ROLES]  # fmt: skip
    csi_rows = [[html.escape(c["characteristic"]), _fmt(c.get("iv", c.get("univariate_gini"))),
                 html.escape(c["ranked_by"]), f"{c['csi']:.4f}", html.escape(c["band"])] for c in s["csi"]]  # fmt: skip
    return ("<p>PSI / CSI = Σ (evaluation share − development share) · ln(evaluation / development) over the "
            "deciles of the development population; below 0.10 stable, 0.10–0.25 shifting, above 0.25 shifted.</p>"
            + _table(["model", "PD PSI", "reading", "grade-distribution PSI"], rows)
            + _figure(r, "score_distribution")
            + "<h3>Characteristic stability (CSI) of the champion's main characteristics</h3>"
            + _table(["characteristic", "IV / Gini", "ranked by", "CSI", "reading"], csi_rows)
            + _figure(r, "csi"))  # fmt: skip


def _swap(r: dict[str, Any]) -> str:
    s = r["swap"]
    rows = [["approval rate (the champion's)", _pct(s["approval_rate"])],
            ["champion: bad rate of the approved", _pct(s["champion_bad_rate"])],
            ["challenger: bad rate at the champion's approval rate", _pct(s["challenger_bad_rate_at_champion_approval"])],
            ["challenger: approval rate at the champion's bad rate", _pct(s["challenger_approval_at_champion_bad_rate"])],
            ["swapped in (challenger approves, champion declines)", f"{s['swap_in']['n']:,}, bad rate {_pct(s['swap_in']['bad_rate'])}"],
            ["swapped out (champion approves, challenger declines)", f"{s['swap_out']['n']:,}, bad rate {_pct(s['swap_out']['bad_rate'])}"],
            ["both approve", f"{s['both_approve']['n']:,}, bad rate {_pct(s['both_approve']['bad_rate'])}"],
            ["both decline", f"{s['both_decline']['n']:,}, bad rate {_pct(s['both_decline']['bad_rate'])}"]]  # fmt: skip
    return (f"<p>The champion approves the {s['approval_rate']:.0%} of applicants with the lowest PD "
            "(policy <code>approval_rate</code>); the challenger approves as many, its own lowest PDs.</p>"
            + _table(["figure", "value"], rows) + _figure(r, "strategy") + _figure(r, "swap"))  # fmt: skip


def _segments(r: dict[str, Any]) -> str:
    s = r["segments"]
    rows = [[html.escape(x["dimension"]), html.escape(x["segment"]), f"{x['n']:,}", f"{x['defaults']:,}",
             _pct(x["default_rate"]), _fmt(x["champion_auc"]), _fmt(x["challenger_auc"]),
             _fmt(x["auc_delta"], "+.4f"), _pct(x["champion_mean_pd"]), _pct(x["challenger_mean_pd"]),
             "yes" if x["judged"] else "no"] for x in s["rows"]]  # fmt: skip
    absent = (f"<p>Not in this dataset: {', '.join(map(html.escape, s['absent_columns']))}.</p>"
              if s["absent_columns"] else "")  # fmt: skip
    return (f"<p>Thin file: {html.escape(s['thin_file_rule'])}. A segment is judged when it has at least "
            f"{s['min_count']} applicants and {s['min_defaults']} of each outcome.</p>" + absent
            + _table(["dimension", "segment", "applicants", "defaults", "bad rate", "champion AUC", "challenger AUC",
                      "Δ AUC", "champion mean PD", "challenger mean PD", "judged"], rows)
            + _figure(r, "segments"))  # fmt: skip


def _lineage(r: dict[str, Any]) -> str:
    m = r["models"]
    fields = ["tag", "kind", "experiment", "folder", "created_at", "dataset", "data_hash", "config_hash",
              "git_commit", "seed", "python"]  # fmt: skip
    rows = [[html.escape(f)] + [f"<code>{_fmt(m[role].get(f))}</code>" for role in ROLES] for f in fields]
    pk = sorted(set(m["champion"]["packages"]) | set(m["challenger"]["packages"]))
    rows += [[f"package {html.escape(p)}"] + [_fmt(m[role]["packages"].get(p)) for role in ROLES] for p in pk]
    tm = sorted(set(m["champion"]["training_metrics"]) | set(m["challenger"]["training_metrics"]))
    rows += [
        [f"training run {html.escape(k)}"] + [_fmt(m[role]["training_metrics"].get(k)) for role in ROLES]
        for k in tm
    ]
    configs = "".join(
        f"<details><summary>{html.escape(role)} experiment config</summary><pre>"
        f"{html.escape(json.dumps(m[role]['config'], indent=1))}</pre></details>"
        for role in ROLES
    )
    return _table(["", "champion", "challenger"], rows) + configs


def _policy(r: dict[str, Any]) -> str:
    return f"<pre>{html.escape(json.dumps(r['policy'], indent=1))}</pre>"


def _alerts(r: dict[str, Any]) -> str:
    a = r["alerts"]
    rows = [[('<b class="pass">OK</b>' if c["passed"] else '<b class="fail">BREACH</b>'), html.escape(c["check"]),
             _value(c["value"]), html.escape(c["threshold"]), html.escape(c["detail"])] for c in a["checks"]]  # fmt: skip
    head = (f'<div class="decision hold">{len(a["breaches"])} alert(s): {html.escape(", ".join(a["breaches"]))}</div>'
            if a["breaches"] else '<div class="decision promote">No alert: every monitored figure is within its threshold.</div>')  # fmt: skip
    return (head + _table(["", "alert", "figure", "threshold", "detail"], rows)
            + "<p>Thresholds: <code>live.alerts</code> of the monitoring config (in <code>monitoring_config</code> of report.json).</p>")  # fmt: skip


def _rate_cell(x: dict[str, Any]) -> str:
    return f"{x['n']:,}, bad rate {_pct(x['bad_rate'])}"


def _live(r: dict[str, Any]) -> str:
    lv = r["live"]
    c = lv["counts"]
    count_rows = [[html.escape(k.replace("_", " ")), f"{v:,}"] for k, v in c.items()]
    ops = lv["operations"]
    lat_rows = []
    for endpoint, figures in ops["latency_ms"].items():
        for name, q in figures.items():
            if q is not None:
                lat_rows.append([html.escape(endpoint), html.escape(name), f"{q['n']:,}", f"{q['p50']:.2f}",
                                 f"{q['p95']:.2f}", f"{q['p99']:.2f}", f"{q['max']:.2f}"])  # fmt: skip
    s = lv["decision_swap"]
    swap_rows = [["champion approves (decisions taken)", f"{_pct(s['champion_approval_rate'])} of applications; "
                  + _rate_cell(s["champion_approved"])],
                 ["challenger would approve", f"{_pct(s['challenger_approval_rate'])} of applications; "
                  + _rate_cell(s["challenger_approved"])],
                 ["swapped in (challenger approves, champion does not)", _rate_cell(s["swap_in"])],
                 ["swapped out (champion approves, challenger does not)", _rate_cell(s["swap_out"])],
                 ["both approve", _rate_cell(s["both_approve"])],
                 ["neither approves", _rate_cell(s["neither_approves"])]]  # fmt: skip
    o = lv["offline_vs_live"]
    auc_rows = [[html.escape(role), _fmt(o[role]["offline_oot_auc"]),
                 f"{o[role]['live_auc']:.4f} <span class=ci>[{o[role]['live_auc_low']:.4f}, {o[role]['live_auc_high']:.4f}]</span>",
                 _fmt(lv["input_parity"]["max_abs_pd_difference"][role], ".2e")] for role in ROLES]  # fmt: skip
    out = [_table(["applications", "count"], count_rows),
           f"<p>Routing modes in the log: {html.escape(json.dumps(lv['routing_modes']))}; outcomes are mature once observed "
           f"{lv['outcome_window_months']} months after the application month (or a default).</p>",
           "<h3>Offline against live</h3>",
           _table(["model", "offline OOT AUC (metrics.json)", "live AUC [interval]", "max |logged − rescored PD|"], auc_rows),
           "<h3>Swap sets of the real decisions</h3>",
           "<p>The decision each model took or would have taken under the credit policy (a referral is not an approval), "
           "with the realised bad rates (Jeffreys intervals in report.json).</p>",
           _table(["set", "applications, bad rate"], swap_rows)]  # fmt: skip
    if lv["split"] is not None:
        sp = lv["split"]
        arm_rows = [[html.escape(arm), f"{a['applicants']:,}", _pct(a["approval_rate"]), _rate_cell(a["approved"]),
                     _pct(a["mean_pd_of_approved"]), _fmt(a["auc_of_deciding_pd"])] for arm, a in sp["arms"].items()]  # fmt: skip
        out += ["<h3>Split arms</h3>",
                _table(["arm", "applicants", "approval rate", "approved, bad rate", "mean PD of the approved",
                        "AUC of the deciding model"], arm_rows),
                f"<p>Fisher's exact test of the approved bad rates of the two arms: p = {_fmt(sp['approved_bad_rate_fisher_p'], '.3g')}.</p>"]  # fmt: skip
    out += ["<h3>Challenger answers and latency</h3>",
            f"<p>Challenger status: {html.escape(json.dumps(ops['challenger_status']))}; error rate "
            f"{_pct(ops['challenger_error_rate'])} of {ops['challenger_due']:,} decisions that asked it.</p>",
            _table(["endpoint", "timing", "decisions", "p50 ms", "p95 ms", "p99 ms", "max ms"], lat_rows)]  # fmt: skip
    return "".join(out)


# (key, title, renderer); a live report (with `alerts`) adds its own sections. Numbered in order.
SECTIONS = [
    ("recommendation", "Recommendation", _recommendation),
    ("data", "Data and populations", _data),
    ("discrimination", "Discrimination", _discrimination),
    ("calibration", "Calibration", _calibration),
    ("grades", "Rating grades", _grades),
    ("stability", "Stability", _stability),
    ("swap", "Swap sets", _swap),
    ("segments", "Segments", _segments),
    ("lineage", "Lineage", _lineage),
    ("policy", "Policy", _policy),
]
LIVE_SECTIONS = [("alerts", "Alerts", _alerts), ("live", "Live decisions", _live)]


def sections(report: dict[str, Any]) -> list[tuple[str, str, Callable[[dict[str, Any]], str]]]:
    """The page's sections, numbered: a live report starts with its alerts and live figures."""
    chosen = [*LIVE_SECTIONS, *SECTIONS] if "alerts" in report else SECTIONS
    return [(key, f"{i}. {title}", fn) for i, (key, title, fn) in enumerate(chosen, start=1)]


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1em 2em;color:#222}
h1{font-size:1.5em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f4f4f4}.ci{color:#666;font-size:.9em}code{font-size:.9em}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}
.decision{padding:.8em 1em;border-radius:6px;margin:1em 0;font-size:1.1em}.promote{background:#e3f4e3;border:1px solid #55a868}
.hold{background:#fdeaea;border:1px solid #c44e52}.pass{color:#2e7d32}.fail{color:#c62828}figure{margin:1em 0}figure img{max-width:100%;height:auto}
figcaption{color:#555;font-size:.85em}nav ol{columns:2;font-size:.9em}
"""


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string (UTF-8)."""
    numbered = sections(report)
    nav = "".join(f'<li><a href="#{key}">{html.escape(title)}</a></li>' for key, title, _ in numbered)
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{fn(report)}</section>'
                   for key, title, fn in numbered)  # fmt: skip
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(report['title'])}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(report['title'])}</h1>"
        f"<p>Generated {html.escape(report['generated_at'])} by govrisk {html.escape(report['govrisk_version'])}; "
        "every figure below is also in <code>report.json</code> beside this file.</p>"
        f"<nav><ol>{nav}</ol></nav>{body}</body></html>\n"
    )
