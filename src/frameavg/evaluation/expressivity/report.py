"""Markdown tables and a PNG figure of expressivity records (``docs/expressivity.md``)."""

from __future__ import annotations

from pathlib import Path

from frameavg.evaluation.expressivity.harness import Record, SuiteResult

#: ``docs/expressivity.md`` keeps its prose; the command rewrites what lies between these lines.
BEGIN_MARK = "<!-- expressivity-results:begin (written by `frameavg expressivity --out docs`) -->"
END_MARK = "<!-- expressivity-results:end -->"
FIGURE_NAME = "expressivity.png"
DOC_NAME = "expressivity.md"


def _cell(records: dict, key: tuple) -> str:
    given, rotated = records.get(key + (False,)), records.get(key + (True,))
    if given is None or rotated is None:
        return "–"
    return f"{given.mean:.0f} ± {given.std:.0f} / {rotated.mean:.0f} ± {rotated.std:.0f}"


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def markdown_tables(records: list[Record]) -> str:
    """One table per k-chain length (models × layers), one for stars and one for the
    counterexamples (models × cases); cells are ``as given / rotated`` mean ± std accuracy (%)."""
    by_key = {(r.test, r.case, r.model, r.layers, r.rotated): r for r in records}
    models = _ordered(r.model for r in records)
    seeds = _ordered(r.seeds for r in records)
    lines = [f"Accuracy in percent, mean ± std over {', '.join(map(str, seeds))} seeds; each cell: "
             "pair as given / randomly rotated and translated at test time. 50 = chance."]
    for test, title in (("k-chains", "k-chains"), ("stars", "L-fold stars (one layer, vector output at the centre)"),
                        ("counterexamples", "Counterexamples (one layer)")):
        cases = _ordered(r.case for r in records if r.test == test)
        if not cases:
            continue
        if test == "k-chains":
            for case in cases:
                layers = sorted({r.layers for r in records if r.test == test and r.case == case})
                lines += ["", f"### {title}, {case}", "",
                          "| model | " + " | ".join(f"{n} layer{'s' if n > 1 else ''}" for n in layers) + " |",
                          "|---|" + "---|" * len(layers)]
                for model in models:
                    if any(r.model == model and r.test == test for r in records):
                        lines.append(f"| {model} | " + " | ".join(
                            _cell(by_key, (test, case, model, n)) for n in layers) + " |")
        else:
            lines += ["", f"### {title}", "", "| model | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
            for model in models:
                if any(r.model == model and r.test == test for r in records):
                    lines.append(f"| {model} | " + " | ".join(_cell(by_key, (test, case, model, 1)) for case in cases) + " |")
    return "\n".join(lines) + "\n"


def write_figure(records: list[Record], path: Path) -> Path:
    """PNG: accuracy vs layers per k-chain length, and per case for stars and counterexamples;
    filled markers as given, open markers rotated; error bars one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _ordered(r.model for r in records)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    panels = [("k-chains", case) for case in _ordered(r.case for r in records if r.test == "k-chains")]
    panels += [(test, None) for test in ("stars", "counterexamples") if any(r.test == test for r in records)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, (test, case) in zip(axes[0], panels):
        rows = [r for r in records if r.test == test and (case is None or r.case == case)]
        if test == "k-chains":
            xs_of = lambda r: r.layers  # noqa: E731
            ax.set_xlabel("layers")
            ax.set_title(f"k-chains, {case}")
        else:
            cases = _ordered(r.case for r in rows)
            xs_of = lambda r, cases=cases: cases.index(r.case)  # noqa: E731
            ax.set_xticks(range(len(cases)), cases, rotation=20 if test == "counterexamples" else 0)
            ax.set_title("stars (1 layer, centre vector)" if test == "stars" else "counterexamples (1 layer)")
        for i, model in enumerate(models):
            for rotated in (False, True):
                sel = [r for r in rows if r.model == model and r.rotated == rotated]
                if not sel:
                    continue
                shift = (i - (len(models) - 1) / 2) * width + (0.12 * width if rotated else -0.12 * width)
                ax.errorbar([xs_of(r) + shift for r in sel], [r.mean for r in sel], yerr=[r.std for r in sel],
                            fmt="o", ms=4, capsize=2, color=colours[model],
                            mfc="white" if rotated else colours[model],
                            label=model if not rotated else None)
        ax.axhline(50, color="grey", lw=0.8, ls=":")
        ax.set_ylim(-5, 105)
        ax.set_ylabel("accuracy [%]")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Filled: pair as given; open: randomly rotated + translated at test time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_block(result: SuiteResult, command: str) -> str:
    """The generated part of ``docs/expressivity.md``: command, runtime, skipped models, tables."""
    lines = [BEGIN_MARK, "", f"Produced by `{command}`: {result.seconds / 60:.1f} min wall, "
             f"{result.cpu_seconds / 60:.1f} min CPU time (all processes).", ""]
    if result.skipped:
        lines += ["Models not run: " + "; ".join(f"`{m}` ({why})" for m, why in result.skipped.items()) + ".", ""]
    lines += [markdown_tables(result.records), f"![expressivity results]({FIGURE_NAME})", "", END_MARK]
    return "\n".join(lines) + "\n"


def write_docs(result: SuiteResult, out_dir: Path, command: str) -> list[Path]:
    """Write ``expressivity.png`` into ``out_dir`` and the tables into ``expressivity.md`` there:
    between the markers when the file has them (its prose is kept), else as a new file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = write_figure(result.records, out_dir / FIGURE_NAME)
    doc = out_dir / DOC_NAME
    block = results_block(result, command)
    text = doc.read_text() if doc.is_file() else ""
    if BEGIN_MARK in text and END_MARK in text:
        head, rest = text.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1]
        text = head + block.rstrip("\n") + tail
    else:
        text = "# Geometric expressivity\n\n" + block
    doc.write_text(text)
    return [doc, figure]
