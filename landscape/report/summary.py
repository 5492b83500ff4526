"""The report's plain-language summary, computed from the numbers (no canned verdicts).

Every sentence is built from the comparison frame (:func:`landscape.report.tables.comparison_frame`),
the pruning and rho-sweep frames and the tau trajectories: which run is flattest by each measure,
whether the logit path dominates the sharpness gradient (tau_logit against tau_func), which run
generalises best, whether flatness and generalisation went together across the runs, how
gracefully each run prunes, the best rho of a sweep and the vision/language contrast of
Functional-SAM Fig. 2.

Estimates with a standard error (the traces) are compared honestly: two runs whose values differ
by less than two combined standard errors, 2 sqrt(se_a^2 + se_b^2), are "not resolved" (about a
95 % two-sided test for Gaussian errors); such a first place names no flattest run, neither in the
detail lines nor in the headline, which counts only resolved first places of the lower-is-flatter
measures. Ratios carry digits enough to mean something (:func:`ratio_phrase`).

"Functional-SAM" here and in the sentences is Singh, Mobahi, Agarwala & Dauphin 2025, "Avoiding
spurious sharpness minimization broadens applicability of SAM", arXiv 2502.02407 (tau: Eq. 9; its
Fig. 2 and Fig. 4 show tau over training). Which curvature measures rank the runs, with their
labels, standard errors and directions, comes from the metric registry
(:func:`landscape.metrics.flatness_columns`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from landscape import metrics as registry
from landscape.metrics import tau
from landscape.report.runs import BASELINES

__all__ = [
    "RESOLVING_ERRORS",
    "Ranking",
    "TauContrast",
    "contrast_sentences",
    "group_sentences",
    "pruning_sentence",
    "rank",
    "ratio_phrase",
    "rho_sentences",
    "separation",
]


def measures(*kinds: str) -> tuple[tuple[str, str, str | None], ...]:
    """``(key, label, error key)`` of the curvature measures that the summary ranks runs by: the
    metrics' comparison columns whose ``flatness`` is one of ``kinds`` (default: lower-is-flatter
    and ranked ones), in the registry's order."""
    return tuple((c.key, c.label, c.error) for c in registry.flatness_columns(*kinds))


# A path "dominates" the sharpness gradient when its share is at least this many times the other's.
DOMINANCE_RATIO = 2.0


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _valid(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    if key not in frame:
        return frame.iloc[0:0]
    values = pd.to_numeric(frame[key], errors="coerce")
    return frame[values.notna() & np.isfinite(values.fillna(0).astype(float))]


def _names(frame: pd.DataFrame) -> dict[str, str]:
    """Row label -> how a sentence names the run (method, with rho when methods repeat)."""
    repeated = frame["method"].duplicated(keep=False)
    out = {}
    for index, row in frame.iterrows():
        name = str(row["method"])
        if repeated[index] and row.get("rho") is not None and not pd.isna(row.get("rho")):
            name += f" (ρ={float(row['rho']):g})"
        if list(out.values()).count(name):
            name = str(row["run"])
        out[str(row["run"])] = name
    return out


# Two estimates are told apart ("resolved") when they differ by more than this many combined
# standard errors, sqrt(se_a^2 + se_b^2): about a 95 % two-sided test for Gaussian errors.
RESOLVING_ERRORS = 2.0


def ratio_phrase(high: float, low: float) -> str:
    """How much higher ``high`` is than ``low`` (both positive), with digits enough to mean
    something: a percentage under 10 % (``0.29% higher``, ``3.6% higher``), else a ratio to three
    significant digits (``1.28× higher``, ``12.3× higher``); never a bare ``1×``."""
    ratio = high / low
    if ratio < 1.1:
        return f"{100.0 * (ratio - 1.0):.2g}% higher"
    if ratio < 1000:
        return f"{ratio:.3g}× higher"
    return f"{ratio:,.0f}× higher"


def _error(row: pd.Series, err_key: str | None) -> float | None:
    if not err_key or err_key not in row:
        return None
    value = pd.to_numeric(pd.Series([row.get(err_key)]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) and math.isfinite(value) else None


def separation(a: pd.Series, b: pd.Series, key: str, err_key: str | None) -> tuple[bool | None, float]:
    """Whether ``a`` and ``b`` differ in ``key`` by more than :data:`RESOLVING_ERRORS` combined
    standard errors (``err_key``), and the combined error; ``None`` when either has no error
    (then only equal values are unresolved)."""
    gap = abs(float(b[key]) - float(a[key]))
    ea, eb = _error(a, err_key), _error(b, err_key)
    if ea is None or eb is None:
        return (None if gap > 0 else False), 0.0
    err = math.hypot(ea, eb)
    return gap > RESOLVING_ERRORS * err, err


@dataclass(frozen=True)
class Ranking:
    """The runs ordered by one curvature measure (lowest first) and whether its first place and
    its spread are resolved (see :func:`separation`: ``False`` within two standard errors,
    ``None`` without errors)."""

    key: str
    label: str
    error: str | None
    ordered: pd.DataFrame
    first_resolved: bool | None
    first_error: float
    spread_resolved: bool | None
    spread_error: float

    @property
    def lowest(self) -> pd.Series:
        return self.ordered.iloc[0]

    @property
    def highest(self) -> pd.Series:
        return self.ordered.iloc[-1]

    @property
    def runner_up(self) -> pd.Series:
        return self.ordered.iloc[1]

    @property
    def winner(self) -> str | None:
        """The run lowest by this measure when the first place is resolved (or has no error)."""
        return None if self.first_resolved is False else str(self.lowest["run"])


def rank(frame: pd.DataFrame, key: str, label: str, err_key: str | None) -> Ranking | None:
    """The ranking of the runs of ``frame`` with a value of ``key`` (``None`` for fewer than two)."""
    part = _valid(frame, key)
    if len(part) < 2:
        return None
    ordered = part.sort_values(key, kind="stable")
    first, first_err = separation(ordered.iloc[0], ordered.iloc[1], key, err_key)
    spread, spread_err = separation(ordered.iloc[0], ordered.iloc[-1], key, err_key)
    return Ranking(key, label, err_key, ordered, first, first_err, spread, spread_err)


def rankings(frame: pd.DataFrame, *kinds: str) -> list[Ranking]:
    """The rankings by the curvature measures of ``kinds`` (see :func:`measures`) with two runs or more."""
    found = (rank(frame, key, label, err) for key, label, err in measures(*kinds))
    return [r for r in found if r is not None]


def _plural(items: Sequence[str], one: str, many: str) -> str:
    return f"{_join(items)} {one if len(items) == 1 else many}"


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def flatness_sentences(frame: pd.DataFrame) -> list[str]:
    """Which run is lowest and highest by each curvature measure, how much higher (see
    :func:`ratio_phrase`), whether the first place and the spread are resolved (more than two
    standard errors apart), and which run is flattest: only measures whose first place is
    resolved name one, and only lower-is-flatter measures count."""
    names = _names(frame)
    out = []
    for key, label, err_key in measures():
        part = _valid(frame, key)
        if len(part) == 1:
            row = part.iloc[0]
            error = _error(row, err_key)
            out.append(
                f"{label} of {names[row['run']]}: {_fmt(row[key])}"
                + (f" ± {error:.2g}" if error is not None else "")
                + "."
            )
            continue
        ranking = rank(frame, key, label, err_key)
        if ranking is None:
            continue
        lo, hi = ranking.lowest, ranking.highest
        text = f"Lowest {label}: {names[lo['run']]} ({_fmt(lo[key])}); highest: {names[hi['run']]} ({_fmt(hi[key])})"
        if ranking.spread_resolved is False:
            difference = (
                f" ({ratio_phrase(float(hi[key]), float(lo[key]))})"
                if lo[key] > 0 and hi[key] > lo[key]
                else ""
            )
            text += (
                f"; the difference{difference} is within two standard errors (standard error of the "
                f"difference {_fmt(ranking.spread_error)}): not resolved"
            )
        else:
            if lo[key] > 0 and hi[key] > lo[key]:
                text += f", {ratio_phrase(float(hi[key]), float(lo[key]))}"
            if ranking.first_resolved is False:
                second = ranking.runner_up
                text += (
                    f"; the runner-up {names[second['run']]} ({_fmt(second[key])}) is within two standard "
                    f"errors (standard error of the difference {_fmt(ranking.first_error)}), so the first "
                    "place is not resolved"
                )
        out.append(text + ".")
    out += _flattest_sentences(frame, names)
    return out


def _flattest_sentences(frame: pd.DataFrame, names: dict[str, str]) -> list[str]:
    """The flattest run over the lower-is-flatter measures: named only by the measures whose first
    place is resolved; the others are said not to resolve one."""
    ranked = rankings(frame, "lower")
    if len(ranked) < 2:
        return []
    picks = {r.label: names[r.winner] for r in ranked if r.winner is not None}
    open_ = [r.label for r in ranked if r.winner is None]
    unresolved = _plural(open_, "does not resolve one", "do not resolve one") if open_ else ""
    distinct = set(picks.values())
    if not picks:
        return [
            "No curvature measure resolves a flattest run: at the top, "
            + _plural(open_, "is", "are")
            + " within two standard errors."
        ]
    if len(distinct) == 1 and not open_:
        return [
            f"{distinct.pop()} is the flattest run by every measure of flatness here ({_join(list(picks))})."
        ]
    if len(distinct) == 1:
        return [
            f"{distinct.pop()} is the flattest run by {_join(list(picks))} ({len(picks)} of {len(ranked)} "
            f"measures); {unresolved}."
        ]
    text = "The measures disagree on the flattest run: " + ", ".join(
        f"{label} picks {who}" for label, who in picks.items()
    )
    return [text + (f"; {unresolved}" if unresolved else "") + "."]


def logit_path_sentences(frame: pd.DataFrame, domain: str) -> list[str]:
    """Whether the logit path (tau_logit) or the functional path (tau_func) dominates the sharpness
    gradient at the final weights, and the sign of tau_cross."""
    part = _valid(_valid(frame, tau.LOGIT), tau.FUNC)
    if part.empty:
        return []
    n = len(part)
    logit = part[tau.LOGIT].astype(float)
    func = part[tau.FUNC].astype(float)
    more = int((logit > func).sum())
    ranges = (
        f"τ_logit {_fmt(logit.min())}–{_fmt(logit.max())}, τ_func {_fmt(func.min())}–{_fmt(func.max())}"
        if n > 1
        else f"τ_logit {_fmt(logit.iloc[0])}, τ_func {_fmt(func.iloc[0])}"
    )
    if n == 1:
        where = f"the {domain} run"
    elif more == n:
        where = f"all {n} {domain} runs"
    else:
        where = f"{more} of {n} {domain} runs"
    if more == n and logit.mean() >= DOMINANCE_RATIO * func.mean():
        verdict = "the logit path dominates the sharpness gradient"
    elif more == 0 and func.mean() >= DOMINANCE_RATIO * logit.mean():
        verdict = "the functional path dominates the sharpness gradient"
    else:
        verdict = "neither path dominates by a factor of two"
    relation = "τ_logit > τ_func" if more or n > 1 else "τ_logit ≤ τ_func"
    text = f"At the final weights {relation} in {where} ({ranges}): {verdict}"
    if (logit > 0.5).all():
        text += "; τ_logit > 0.5 in every one"
    out = [text + "."]
    if tau.CROSS in part:
        cross = part[tau.CROSS].astype(float)
        negative = int((cross < 0).sum())
        if negative == n:
            out.append(
                f"τ_cross is negative in all {n} (down to {_fmt(cross.min())}): the two paths pull against "
                "each other, as Functional-SAM reports."
            )
        elif negative == 0:
            out.append(
                f"τ_cross is positive in all {n} ({_fmt(cross.min())}–{_fmt(cross.max())}): here the two "
                "paths point the same way, unlike the negative τ_cross of Functional-SAM Fig. 4."
            )
        else:
            out.append(f"τ_cross is negative in {negative} of {n} runs.")
    return out


def generalisation_sentences(frame: pd.DataFrame, domain: str = "vision") -> list[str]:
    """Best eval loss and accuracy, the difference to the AdamW (or SGD) baseline, the constant
    predictor (unigram model of a language model, class prior of a classifier), and the smallest
    and largest train/eval gap."""
    names = _names(frame)
    part = _valid(frame, "eval_loss")
    if part.empty:
        return []
    ordered = part.sort_values("eval_loss", kind="stable")
    best = ordered.iloc[0]
    text = f"Best eval loss: {names[best['run']]} ({best['eval_loss']:.4f})"
    baseline = part[part["method_id"].isin(BASELINES)] if "method_id" in part else part.iloc[0:0]
    if not baseline.empty and baseline.iloc[0]["run"] != best["run"]:
        b = baseline.iloc[0]
        text += f", {b['eval_loss'] - best['eval_loss']:.4f} below {names[b['run']]} ({b['eval_loss']:.4f})"
    elif not baseline.empty and len(ordered) > 1:
        second = ordered.iloc[1]
        text += f": the baseline itself, {second['eval_loss'] - best['eval_loss']:.4f} below {names[second['run']]}"
    if len(ordered) > 1:
        worst = ordered.iloc[-1]
        text += f"; worst: {names[worst['run']]} ({worst['eval_loss']:.4f})"
    out = [text + "."]
    acc = _valid(part, "eval_accuracy")
    if len(acc) > 1:
        top = acc.sort_values("eval_accuracy", ascending=False, kind="stable").iloc[0]
        out.append(f"Best eval accuracy: {names[top['run']]} ({top['eval_accuracy']:.4f}).")
    unigram = _valid(part, "unigram_eval_loss")
    if not unigram.empty:
        reference = float(unigram["unigram_eval_loss"].iloc[0])
        beat = int((part["eval_loss"].astype(float) < reference).sum())
        what = "the unigram model" if domain == "language" else "the class prior"
        margin = reference - float(ordered.iloc[0]["eval_loss"])
        if beat:
            out.append(
                f"{beat} of {len(part)} runs beat {what} as a constant prediction ({reference:.4f} nats on the "
                f"held-out set), the best by {margin:.4f} nats."
            )
        else:
            out.append(
                f"No run beats {what} as a constant prediction yet ({reference:.4f} nats on the held-out set); "
                f"the best is {-margin:.4f} nats above it."
            )
    gap = _valid(part, "train_loss")
    if len(gap) > 1:
        gaps = (gap["eval_loss"].astype(float) - gap["train_loss"].astype(float)).rename("gap")
        small = gap.assign(gap=gaps).sort_values("gap", kind="stable")
        lo, hi = small.iloc[0], small.iloc[-1]
        out.append(
            f"Generalisation gap (eval − train loss) from {lo['gap']:+.4f} ({names[lo['run']]}) to "
            f"{hi['gap']:+.4f} ({names[hi['run']]})."
        )
    return out


def _spearman(a: pd.Series, b: pd.Series) -> float:
    ra, rb = a.rank().to_numpy(dtype=float), b.rank().to_numpy(dtype=float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def right_reason_sentences(frame: pd.DataFrame) -> list[str]:
    """Did flatness go with generalisation? Rank correlation of each lower-is-flatter measure with
    eval loss (four runs or more), and whether the run lowest by the first of them (λmax(H)) is
    also the best one, with its share of logit-path sharpness."""
    names = _names(frame)
    flatter = measures("lower")
    if not flatter:
        return []
    first, first_label, first_err = flatter[0]
    part = _valid(_valid(frame, "eval_loss"), first)
    if len(part) < 2:
        return []
    out = []
    if len(part) >= 4:
        pieces = []
        for key, label, _ in flatter:
            sub = _valid(part, key)
            if len(sub) >= 4:
                r = _spearman(sub[key].astype(float), sub["eval_loss"].astype(float))
                if math.isfinite(r):
                    pieces.append(f"{label} {r:+.2f}")
        if pieces:
            out.append(
                f"Rank correlation (Spearman) of curvature with eval loss over {len(part)} runs: "
                + ", ".join(pieces)
                + " (+1: the flatter, the better it generalised)."
            )
    ranking = rank(part, first, first_label, first_err)
    if ranking is not None and ranking.first_resolved is False:
        second = ranking.runner_up
        out.append(
            f"No run has a resolved lowest {first_label}: {names[ranking.lowest['run']]} "
            f"({_fmt(ranking.lowest[first])}) and {names[second['run']]} ({_fmt(second[first])}) are within "
            "two standard errors, so flatness by it cannot be set against generalisation."
        )
        return out
    flattest = part.sort_values(first, kind="stable").iloc[0]
    best = part.sort_values("eval_loss", kind="stable").iloc[0]
    if flattest["run"] == best["run"]:
        out.append(f"{names[best['run']]} has both the lowest {first_label} and the best eval loss.")
    else:
        text = (
            f"{names[flattest['run']]} has the lowest {first_label} ({_fmt(flattest[first])}) but not the best "
            f"eval loss ({flattest['eval_loss']:.4f} against {best['eval_loss']:.4f} of {names[best['run']]})"
        )
        out.append(text + _logit_share(part, flattest, names) + ".")
    return out


def _logit_share(part: pd.DataFrame, flattest: pd.Series, names: dict[str, str]) -> str:
    """The flattest run's tau_logit against the largest one (empty without tau)."""
    shares = _valid(part, tau.LOGIT)
    if len(shares) < 2 or pd.isna(flattest.get(tau.LOGIT)):
        return ""
    top = shares.sort_values(tau.LOGIT, ascending=False, kind="stable").iloc[0]
    if top["run"] == flattest["run"]:
        return (
            f"; it also has the largest τ_logit ({flattest[tau.LOGIT]:.3f}): its flatness comes most "
            "through the logit path, the route Functional-SAM calls spurious"
        )
    return f"; its τ_logit is {flattest[tau.LOGIT]:.3f} (largest: {names[top['run']]}, {top[tau.LOGIT]:.3f})"


def pruning_sentence(frame: pd.DataFrame, sparsity: float = 0.5) -> list[str]:
    """How much each run's eval loss rises at the sparsity nearest ``sparsity`` (Fig. 5)."""
    if frame is None or frame.empty:
        return []
    levels = sorted(set(frame["sparsity"].astype(float)) - {0.0})
    if not levels:
        return []
    level = min(levels, key=lambda s: abs(s - sparsity))
    rises = []
    for run, part in frame.groupby("run", sort=False):
        dense = part[part["sparsity"] == 0.0]["eval_loss"]
        at = part[part["sparsity"] == level]["eval_loss"]
        if dense.empty or at.empty:
            continue
        rises.append((float(at.iloc[0]) - float(dense.iloc[0]), str(part["method"].iloc[0]), str(run)))
    if len(rises) < 1:
        return []
    rises.sort()
    names = {}
    for _, method, run in rises:
        names[run] = method if [m for _, m, _ in rises].count(method) == 1 else run
    lo, hi = rises[0], rises[-1]
    if len(rises) == 1:
        return [f"Pruning {level:.0%} of the weights raises the eval loss by {lo[0]:+.4f}."]
    return [
        f"Pruning {level:.0%} of the weights (one shot, global magnitude): the eval loss rises least for "
        f"{names[lo[2]]} ({lo[0]:+.4f}) and most for {names[hi[2]]} ({hi[0]:+.4f})."
    ]


def rho_sentences(frame: pd.DataFrame) -> list[str]:
    """Per swept method: the best rho and its eval loss, against the rho = 0 baseline (Fig. 3)."""
    if frame is None or frame.empty:
        return []
    out = []
    base = frame[frame["rho"].isna()]
    reference = base.sort_values("eval_loss").iloc[0] if not base.empty else None
    for _, part in frame[frame["rho"].notna()].groupby("method_id", sort=False):
        if part["rho"].nunique() < 2:
            continue
        part = part.sort_values("rho")
        best = part.loc[part["eval_loss"].idxmin()]
        text = (
            f"{best['method']} over ρ = {', '.join(f'{r:g}' for r in part['rho'])}: best eval loss "
            f"{best['eval_loss']:.4f} at ρ = {best['rho']:g}"
        )
        if reference is not None:
            better = int((part["eval_loss"] < reference["eval_loss"]).sum())
            text += (
                f"; {better} of {len(part)} values of ρ beat {reference['method']} "
                f"(ρ = 0, {reference['eval_loss']:.4f})"
            )
        out.append(text + ".")
    return out


def headline(frame: pd.DataFrame) -> list[str]:
    """One sentence answering the report's question for a group: the run flattest by most
    lower-is-flatter curvature measures (a measure counts only when its first place is resolved,
    more than two standard errors ahead), the run with the best eval loss, whether they are the
    same, and which path the sharpness gradient takes."""
    names = _names(frame)
    ranked = rankings(frame, "lower")
    evals = _valid(frame, "eval_loss")
    if not ranked or evals.empty:
        return []
    wins: dict[str, int] = {}
    for ranking in ranked:
        if ranking.winner is not None:
            wins[ranking.winner] = wins.get(ranking.winner, 0) + 1
    open_ = len(ranked) - sum(wins.values())
    best_row = evals.sort_values("eval_loss", kind="stable").iloc[0]
    best = str(best_row["run"])
    if wins:
        top = max(wins.values())
        flattest = [run for run, count in wins.items() if count == top]
        who = " and ".join(names[r] for r in flattest)
        text = f"In short: {who} {'is' if len(flattest) == 1 else 'are'} flattest by {top} of {len(ranked)} measures"
        if open_:
            text += f" ({open_} {'does' if open_ == 1 else 'do'} not resolve a flattest run)"
        text += f"; {names[best]} generalises best (eval loss {float(best_row['eval_loss']):.4f})"
        text += ", the same run" if best in flattest else ", a different run"
    else:
        text = (
            "In short: no run is resolved as the flattest (at the top of every curvature measure the runs "
            f"are within two standard errors); {names[best]} generalises best (eval loss "
            f"{float(best_row['eval_loss']):.4f})"
        )
    shares = _valid(_valid(frame, tau.LOGIT), tau.FUNC)
    if not shares.empty:
        logit, func = shares[tau.LOGIT].astype(float), shares[tau.FUNC].astype(float)
        if (logit > func).all() and logit.mean() >= DOMINANCE_RATIO * func.mean():
            text += "; the logit path dominates the sharpness gradient in every run"
        elif (func > logit).all() and func.mean() >= DOMINANCE_RATIO * logit.mean():
            text += "; the functional path dominates the sharpness gradient in every run"
        else:
            text += "; neither path dominates the sharpness gradient in every run"
    return [text + "."]


def group_sentences(frame: pd.DataFrame, domain: str, pruning: pd.DataFrame | None = None) -> list[str]:
    """The summary of one group of runs (one suite): the headline, flatness, logit path,
    generalisation, the flat-for-the-right-reason check and pruning."""
    return [
        *headline(frame),
        *flatness_sentences(frame),
        *logit_path_sentences(frame, domain),
        *generalisation_sentences(frame, domain),
        *right_reason_sentences(frame),
        *(pruning_sentence(pruning) if pruning is not None else []),
    ]


@dataclass(frozen=True)
class TauContrast:
    """One side of the vision/language contrast: the run shown and its tau over training."""

    domain: str
    group: str
    method: str
    final_logit: float
    final_func: float
    mean_logit: float
    mean_func: float


def contrast_sentences(sides: Sequence[TauContrast]) -> list[str]:
    """Compare tau_logit between the vision and the language side (Functional-SAM Fig. 2 finds it
    near 1 in language and comparable to tau_func in vision)."""
    vision = [s for s in sides if s.domain == "vision"]
    language = [s for s in sides if s.domain == "language"]
    if not vision or not language:
        return []
    v, lang = vision[0], language[0]
    text = (
        f"Mean τ_logit over training ({v.method} runs): vision {v.mean_logit:.3f} (τ_func {v.mean_func:.3f}), "
        f"language {lang.mean_logit:.3f} (τ_func {lang.mean_func:.3f}); at the end {v.final_logit:.3f} and "
        f"{lang.final_logit:.3f}."
    )
    if lang.mean_logit > v.mean_logit:
        verdict = (
            " The logit path carries more of the sharpness gradient in language than in vision, the direction "
            "of Functional-SAM Fig. 2"
        )
        verdict += (
            "; both are logit-dominated here."
            if v.mean_logit > DOMINANCE_RATIO * v.mean_func
            else "; in vision the two paths are closer."
        )
    else:
        verdict = (
            " Here the logit path carries more of the sharpness gradient in vision than in language, the opposite "
            "of Functional-SAM Fig. 2 (ViT on ImageNet/JFT against a transformer LM on C4); these toy models "
            "and short runs are far from that setting."
        )
    return [text + verdict]
