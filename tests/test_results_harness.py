"""The results harness's summaries (experiments/run.py): the spread across training seeds
and the meta-transfer verdict are computed from the rows they summarise, a group whose
reference is not among the groups to run is refused before any training, and the table
prints each measurement once, and the rows of retrained weights are kept beside the new
ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))

import mark_earlier_rows  # noqa: E402
import run  # noqa: E402
from rows import Group, Pair  # noqa: E402


def row(label: str, model: str, accuracy: float, seed: int, *, seed_of: str = "",
        group: str = "g", paired: tuple[float, float] = (0.0, 0.01),
        measured_on: str = "") -> dict:
    r = {"group": group, "label": label, "model": model, "head": "linear-probe", "shots": 5,
         "query_imbalance": None, "accuracy": {"mean": accuracy, "ci95": 0.006},
         "seeds": {"episodes": 0, "training": [seed]},
         "paired": {"reference": "ref", "mean": paired[0], "ci95": paired[1]}}
    if seed_of:
        r["seed_of"] = seed_of
    if measured_on:
        r["measured_on"] = measured_on
    return r


def test_seed_spread_gives_each_seed_their_mean_and_standard_deviation():
    rows = [row("m + LP", "m", 0.48, 0), row("m (seed 1) + LP", "m-s1", 0.50, 1, seed_of="m"),
            row("m (seed 2) + LP", "m-s2", 0.49, 2, seed_of="m"),
            row("old + LP", "old", 0.30, 0, measured_on="earlier")]
    lines = run.seed_spread(rows)
    body = [line for line in lines if line.startswith("- ")]
    assert len(body) == 1
    assert body[0].startswith("- m + LP, 5-shot, training seeds 0, 1, 2: 48.0, 50.0, 49.0;")
    assert "mean 49.0" in body[0] and "deviation across seeds 1.0 points" in body[0]
    assert "± 0.6" in body[0]
    assert run.seed_spread(rows[:1]) == []  # one seed: nothing to spread


def test_meta_transfer_verdict_follows_the_rows():
    losing = [row("a", "a", 0.4, 0, group="meta-transfer-x", paired=(-0.01, 0.004))]
    assert "does not beat" in run.meta_transfer_verdict(losing)[0]
    winning = losing + [row("b", "b", 0.4, 0, group="meta-transfer-y", paired=(0.01, 0.004))]
    assert "beats the encoder it starts from in 1 of 2 rows" in \
        run.meta_transfer_verdict(winning)[0]
    assert run.meta_transfer_verdict([row("c", "c", 0.4, 0)]) == []
    own_reference = row("ref", "enc", 0.41, 0, group="meta-transfer-x", paired=(0.0, 0.0))
    assert "the closest: a, 5-shot" in run.meta_transfer_verdict(losing + [own_reference])[0]


def test_a_missing_reference_group_is_named_before_any_work():
    owner = Group("owner", "t.yaml", "cpu", [Pair("pixels", "simpleshot", "floor")])
    user = Group("user", "t.yaml", "cpu", [Pair("m", "simpleshot", "m")], reference="floor")
    run.check_references([owner, user], [owner, user])
    with pytest.raises(SystemExit, match="add owner to --only"):
        run.check_references([user], [owner, user])


def table_row(label: str, model: str, accuracy: float, *, episodes: int = 600,
              group: str = "g", measured_on: str = "") -> dict:
    r = row(label, model, accuracy, 0, group=group, measured_on=measured_on)
    r.update(task="t.yaml", episodes=episodes, protocol="inductive",
             macro_f1={"mean": accuracy, "ci95": 0.006}, auroc={"mean": 0.7, "ci95": 0.004},
             compute={"training_min": None, "evaluation_s": 1.0, "load_average": [1.0]})
    return r


def test_results_table_prints_a_measurement_once_and_each_episode_count():
    rows = [table_row("m + LP", "m", 0.48, group="a"),
            table_row("m + LP", "m", 0.48, group="b"),  # a reference two groups share
            table_row("m + LP (another label)", "m", 0.48, group="c"),  # the same pair
            table_row("m + finetune", "m", 0.50, episodes=100),
            table_row("m + finetune", "m", 0.51, episodes=50, group="old", measured_on="w0")]
    for r in rows[3:]:
        r["head"] = "finetune"
    text = run.markdown(rows, [], "cpu", ["a", "b", "c", "g"])
    table = [line for line in text.splitlines() if line.startswith("| m + ")]
    assert [line.split(" | ")[0] for line in table] == ["| m + LP", "| m + finetune",
                                                       "| m + finetune †"]
    assert {line.split(" | ")[3] for line in table[1:]} == {"100", "50"}
    # the footnote offers only registered groups to re-run, and names the retired one
    footnote = next(line for line in text.splitlines() if line.startswith("† Measured on w0"))
    assert "--only GROUP" not in footnote and "The rows of old are" in footnote


def test_marking_keeps_rows_of_superseded_weights_and_their_references():
    rows = [{**row("blood-v1 + LP", "blood-v1", 0.48, 0, group="supervised"), "task": "t"},
            {**row("shipped blood-v1 (output) + LP", "out", 0.47, 0, group="emb"),
             "task": "t"},
            {**row("blood-v1 + Meta-Baseline + LP", "mb", 0.46, 0, group="meta"), "task": "t",
             "paired": {"reference": "blood-v1 + LP", "mean": -0.02, "ci95": 0.01}},
            {**row("pixels", "pixels", 0.30, 0, group="floors"), "task": "t"},
            {**row("blood-v1 + LP", "blood-v1", 0.40, 0, group="other"), "task": "u"}]
    count = mark_earlier_rows.mark(rows, "t", {"blood-v1", "out", "mb"}, "no mixup", "before")
    assert count == 3
    assert [r["label"] for r in rows] == [
        "blood-v1 (no mixup) + LP", "shipped blood-v1 (no mixup, output) + LP",
        "blood-v1 (no mixup) + Meta-Baseline + LP", "pixels", "blood-v1 + LP"]
    assert rows[2]["paired"]["reference"] == "blood-v1 (no mixup) + LP"
    assert [r["group"] for r in rows[:3]] == ["supervised-no-mixup", "emb-no-mixup",
                                              "meta-no-mixup"]
    assert [r.get("measured_on") for r in rows] == ["before"] * 3 + [None, None]
    assert mark_earlier_rows.mark(rows, "t", {"blood-v1", "out", "mb"}, "x", "y") == 0


def test_target_verdict_says_reached_or_short_and_lists_levers_not_floors():
    from rows import Target

    target = Target("t.yaml", "m + LP", {5: 50.0}, floor="pixels")

    def scored(label, model, accuracy, reference, paired, *, protocol="inductive"):
        r = table_row(label, model, accuracy)
        r.update(protocol=protocol,
                 paired={"reference": reference, "mean": paired, "ci95": 0.004})
        return r

    rows = [scored("pixels", "px", 0.37, "pixels", 0.0),
            scored("m + LP", "m", 0.488, "pixels", 0.118),  # against the floor: no lever
            scored("m + LP, power", "m", 0.493, "m + LP", 0.005),
            scored("m + TIM", "m", 0.497, "m + LP", 0.009, protocol="transductive"),
            scored("m, mixup + LP", "mx", 0.439, "m + LP", -0.049)]
    lines = run.target_verdict(rows, target)
    verdict = next(line for line in lines if line.startswith("- 5-shot"))
    assert "48.8 ± 0.6, not reached (1.2 points short)" in verdict
    assert "Best other inductive row: m + LP, power, 49.3" in verdict
    assert "row of any protocol: m + TIM (transductive), 49.7" in verdict
    levers = [line for line in lines if line.startswith("- m")]
    assert levers == ["- m + TIM (transductive): +0.9 ± 0.4 vs m + LP",
                      "- m + LP, power: +0.5 ± 0.4 vs m + LP",
                      "- m, mixup + LP: -4.9 ± 0.4 vs m + LP"]
    rows[1]["accuracy"]["mean"] = 0.5
    assert "50.0 ± 0.6, reached." in "\n".join(run.target_verdict(rows, target))
    assert run.target_verdict(rows, Target("other.yaml", "m + LP", {5: 50.0}, "px")) == []


def test_the_shots_plot_joins_a_model_and_head_across_labels():
    """The power rows are labelled 'shipped blood-v1 ...' at 1 and 5 shots and 'blood-v1 ...'
    at 10 and 20: the same model and head, so one curve (it was dropped before)."""
    import plot_shots

    def shot_row(label, head, shots, accuracy):
        return {"task": plot_shots.TASK, "label": label, "model": "blood-v1", "head": head,
                "shots": shots, "protocol": "inductive", "episodes": 600,
                "accuracy": {"mean": accuracy, "ci95": 0.006}}

    rows = [shot_row("shipped blood-v1 + LP, power", "linear-probe:power=0.5", s, a)
            for s, a in ((1, 0.39), (5, 0.49))]
    rows += [shot_row("blood-v1 + LP, power", "linear-probe:power=0.5", s, a)
             for s, a in ((10, 0.54), (20, 0.59))]
    rows += [shot_row("blood-v1 + LP", "linear-probe", s, 0.4) for s in (1, 5, 10)]  # no 20
    found = plot_shots.curves(rows)
    assert list(found) == ["blood-v1 + LP, power"]
    assert [found["blood-v1 + LP, power"][s]["mean"] for s in plot_shots.SHOTS] == \
        [0.39, 0.49, 0.54, 0.59]
