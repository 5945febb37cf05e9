"""Re-ranking (recsys.allocation): known answers on hand-made candidate sets, the rules as
properties over random ones, exposure budgets across chunks, and the config file."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.allocation import RerankConfig, allocate, compile_plan
from recsys.allocation.exposure import caps, merit
from recsys.allocation.features import ItemFeatures

GENRES = ("A", "B")


def features(genre_sets: list[set[str]], released: list[str] | None = None) -> ItemFeatures:
    """Items 1..n with the given genre sets (and release dates), unit vectors in 2-d."""
    n = len(genre_sets) + 1
    g = torch.zeros(n, len(GENRES))
    for i, s in enumerate(genre_sets, 1):
        for name in s:
            g[i, GENRES.index(name)] = 1.0
    angles = torch.linspace(0, 1.5, n)
    vecs = torch.stack([angles.cos(), angles.sin()], 1)
    vecs[0] = 0.0
    ids = np.array(["", *[str(i) for i in range(1, n)]], dtype=object)
    rel = None
    if released is not None:
        rel = np.array(["NaT", *released], dtype="datetime64[D]")
    return ItemFeatures(ids, GENRES, g, vecs, rel)


def run(cfg: dict, feats: ItemFeatures, cand, scores, k, history=None, budget=None):
    plan = compile_plan(RerankConfig.from_dict(cfg), feats)
    cand = torch.tensor(cand, dtype=torch.long)
    scores = torch.tensor(scores, dtype=torch.float32)
    history = torch.zeros(len(cand), 1, dtype=torch.long) if history is None else history
    items, out_scores = allocate(plan, cand, scores, torch.as_tensor(history), k, budget)
    return items.tolist(), out_scores


# -- known answers -------------------------------------------------------------------

FOUR = [{"A"}, {"A"}, {"B"}, {"A", "B"}]


def test_lambda_one_is_the_model_ranking():
    items, scores = run(
        {"diversity": {"method": "mmr", "lambda": 1.0}},
        features(FOUR),
        [[1, 2, 3, 4]],
        [[4.0, 3.0, 2.0, 1.0]],
        3,
    )
    assert items == [[1, 2, 3]]
    assert scores.tolist() == [[4.0, 3.0, 2.0]]


def test_mmr_with_genre_jaccard():
    # Relevance exp(score - 4) = 1, .37, .14, .05. Step 1 takes 1. Then 2 (same genre,
    # similarity 1): .18 - .5; 3 (0): .07; 4 (1/2): .02 - .25 → 3. Then 4's largest
    # similarity is 1/2 against 2's 1: 4 before 2. With the mean (1/2 each) 2 goes first.
    cfg = {"diversity": {"method": "mmr", "lambda": 0.5, "similarity": "genres"}}
    items, scores = run(cfg, features(FOUR), [[1, 2, 3, 4]], [[4.0, 3.0, 2.0, 1.0]], 4)
    assert items == [[1, 3, 4, 2]]
    assert scores.tolist() == [[4.0, 2.0, 1.0, 3.0]]  # the model's scores, re-ordered
    cfg["diversity"]["penalty"] = "mean"
    assert run(cfg, features(FOUR), [[1, 2, 3, 4]], [[4.0, 3.0, 2.0, 1.0]], 4)[0] == [[1, 3, 2, 4]]


def test_mmr_with_embeddings():
    # Unit vectors at angles .375, .75, 1.125, 1.5 (items 1-4): item 4 is farthest from 1.
    items, _ = run(
        {"diversity": {"method": "mmr", "lambda": 0.3, "similarity": "embeddings"}},
        features(FOUR),
        [[1, 2, 3, 4]],
        [[4.0, 3.0, 2.0, 1.0]],
        2,
    )
    assert items == [[1, 4]]


def test_calibration_known_answer():
    # History {A}, {B}: p = (.5, .5). After item 1 (A), item 3 (B, relevance e^-2) brings
    # the list's mix to p (KL 1.96 → 0): at lambda .5 that beats item 2's relevance e^-1
    # (.07 + .98 against .18), at .9 not (.12 + .20 against .33).
    feats = features([{"A"}, {"A"}, {"B"}])
    history = torch.tensor([[1, 3]])
    cfg = {"diversity": {"method": "calibration", "lambda": 0.5}}
    assert run(cfg, feats, [[1, 2, 3]], [[3.0, 2.0, 1.0]], 2, history)[0] == [[1, 3]]
    cfg["diversity"]["lambda"] = 0.9
    assert run(cfg, feats, [[1, 2, 3]], [[3.0, 2.0, 1.0]], 2, history)[0] == [[1, 2]]


def test_max_share_goes_to_highest_gain_then_earlier_user():
    # 3 users want item 1; ceil(0.34 x 3) = 2 lists may hold it.
    cfg = {"exposure": {"max_share": 0.34}}
    plan = compile_plan(RerankConfig.from_dict(cfg), features(FOUR))
    budget = caps(plan.cfg.exposure, 3, 1, 4)
    assert budget.tolist() == [0, 2, 2, 2, 2]
    items, _ = run(cfg, features(FOUR), [[1, 2, 3]] * 3, [[3.0, 2.0, 1.0]] * 3, 1, budget=budget)
    assert items == [[1], [1], [2]]
    assert budget.tolist() == [0, 0, 1, 2, 2]


def test_budget_carries_from_chunk_to_chunk():
    cfg = {"exposure": {"max_share": 0.5}}
    plan = compile_plan(RerankConfig.from_dict(cfg), features(FOUR))
    budget = caps(plan.cfg.exposure, 4, 2, 4)  # 2 lists per item
    first, _ = run(cfg, features(FOUR), [[1, 2, 3, 4]] * 2, [[4, 3, 2, 1]] * 2, 2, budget=budget)
    second, _ = run(cfg, features(FOUR), [[1, 2, 3, 4]] * 2, [[4, 3, 2, 1]] * 2, 2, budget=budget)
    assert first == [[1, 2], [1, 2]]
    assert second == [[3, 4], [3, 4]]


def test_rules_block_pin_quota_boost():
    feats = features(FOUR, released=["1990-01-01", "1999-05-01", "1990-01-01", "1990-01-01"])
    cand, scores = [[1, 2, 3, 4]], [[4.0, 3.0, 2.0, 1.0]]
    assert run({"rules": {"block": ["1"]}}, feats, cand, scores, 2)[0] == [[2, 3]]
    assert run({"rules": {"pin": {"4": 1}}}, feats, cand, scores, 3)[0] == [[4, 1, 2]]
    assert run({"rules": {"pin": {"4": 2}}}, feats, cand, scores, 3)[0] == [[1, 4, 2]]
    quota = {"quota": [{"field": "genres", "value": "A", "at_most": 1}]}
    assert run({"rules": quota}, feats, cand, scores, 2)[0] == [[1, 3]]
    quota = {"quota": [{"field": "genres", "value": "B", "at_least": 2}]}
    assert run({"rules": quota}, feats, cand, scores, 3)[0] == [[1, 3, 4]]
    boost = {"boost": {"newer_than": "1998-01-01", "by": 0.7}}  # item 2: e^-1 + .7 > 1
    assert run({"rules": boost}, feats, cand, scores, 2)[0] == [[2, 1]]


def test_unmeetable_quota_names_the_user_and_rule():
    plan = compile_plan(
        RerankConfig.from_dict(
            {"rules": {"quota": [{"field": "genres", "value": "B", "at_least": 1}]}}
        ),
        features(FOUR),
    )
    cand = torch.tensor([[1, 2]])
    with pytest.raises(
        ValueError,
        match=r"user 'u7': cannot meet rules.quota at least 1 items "
        r"with genres 'B'",
    ):
        allocate(
            plan,
            cand,
            torch.tensor([[2.0, 1.0]]),
            torch.zeros(1, 1, dtype=torch.long),
            2,
            user_ids=["u7"],
        )


def test_proportional_caps_follow_merit():
    cand = torch.tensor([[1, 2], [1, 2]])
    scores = torch.tensor([[0.0, 0.0], [np.log(3.0), 0.0]])
    m = merit(cand, scores, 3)
    assert m.tolist() == pytest.approx([0.0, 0.5 + 0.75, 0.5 + 0.25, 0.0])
    cfg = RerankConfig.from_dict({"exposure": {"mode": "proportional"}}).exposure
    # 2 users x 1 slot: item 1 gets ceil(1.25 / 2 x 2) = 2 lists, item 2 ceil(.75) = 1.
    assert caps(cfg, 2, 1, 3, m).tolist() == [0, 2, 1, 0]
    # 3 users who all slightly prefer item 1: merit 1.57 and 1.43 give each item 2 lists,
    # so the third user (ties go to the earlier one) gets item 2.
    cand, scores = [[1, 2]] * 3, [[0.1, 0.0]] * 3
    m = merit(torch.tensor(cand), torch.tensor(scores), 4)
    budget = caps(cfg, 3, 1, 4, m)
    assert budget.tolist() == [0, 2, 2, 0, 0]
    items, _ = run({"exposure": {"mode": "proportional"}}, features(FOUR), cand, scores, 1,
                   budget=budget)  # fmt: skip
    assert items == [[1], [1], [2]]


# -- properties over random candidate sets -------------------------------------------


@st.composite
def cases(draw):
    n_items = draw(st.integers(6, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    genre_sets = [
        set(rng.choice(GENRES, rng.integers(0, 3), replace=False)) for _ in range(n_items)
    ]
    B = draw(st.integers(1, 6))
    M = draw(st.integers(3, n_items))
    cand = np.stack([rng.permutation(np.arange(1, n_items + 1))[:M] for _ in range(B)])
    scores = np.sort(rng.normal(size=(B, M)), axis=1)[:, ::-1].copy()
    k = draw(st.integers(1, min(M, 5)))
    rules: dict = {}
    if draw(st.booleans()):
        rules["block"] = [str(i) for i in rng.choice(np.arange(1, n_items + 1), 2, replace=False)]
    if draw(st.booleans()):
        rest = [i for i in range(1, n_items + 1) if str(i) not in rules.get("block", [])]
        rules["pin"] = {str(int(rng.choice(rest))): int(rng.integers(1, k + 1))}
    if draw(st.booleans()):
        rules["quota"] = [{"field": "genres", "value": "A", "at_most": int(rng.integers(0, 3))}]
    if draw(st.booleans()):
        rules.setdefault("quota", []).append(
            {"field": "genres", "value": "B", "at_least": int(rng.integers(1, k + 1))}
        )
    cfg = {
        "rules": rules,
        "diversity": {
            "method": draw(st.sampled_from(["mmr", "calibration"])),
            "lambda": draw(st.floats(0, 1)),
        },
    }
    if draw(st.booleans()):
        cfg["exposure"] = {"max_share": draw(st.floats(0.2, 1.0))}
    return genre_sets, cand, scores, k, cfg


@settings(max_examples=100, deadline=None)
@given(cases())
def test_rules_hold_on_random_candidates(case):
    genre_sets, cand, scores, k, cfg = case
    feats = features(genre_sets)
    pins = {int(i): r for i, r in cfg["rules"].get("pin", {}).items()}
    pinned_a = sum("A" in genre_sets[i - 1] for i in pins)
    quotas = cfg["rules"].get("quota", [])
    if any(q.get("at_most", k) < pinned_a for q in quotas):
        with pytest.raises(ValueError, match=r"the pinned items alone break rules\.quota"):
            compile_plan(RerankConfig.from_dict(cfg), feats)
        return
    plan = compile_plan(RerankConfig.from_dict(cfg), feats)
    for item in pins:  # pinned items are always candidates (extra_candidates adds them)
        if not (cand == item).any(1).all():
            cand = np.concatenate([cand, np.full((len(cand), 1), item)], 1)
            scores = np.concatenate([scores, np.full((len(cand), 1), -5.0)], 1)
    B = len(cand)
    budget = None
    if plan.cfg.exposure is not None:
        budget = caps(plan.cfg.exposure, 2 * B, k - len(pins), feats.num_items)
    start = None if budget is None else budget.clone()
    need_free = sum(
        max(0, q["at_least"] - sum("B" in genre_sets[i - 1] for i in pins))
        for q in quotas
        if "at_least" in q
    )
    if need_free > k - len(pins):
        with pytest.raises(ValueError, match="free slots"):
            plan.check_k(k)
        return
    args = (torch.tensor(cand), torch.tensor(scores, dtype=torch.float32))
    try:
        items, _ = allocate(plan, *args, torch.zeros(B, 1, dtype=torch.long), k, budget)
    except ValueError as e:
        # Only an at_least quota may be unmeetable, and only when too few candidates of
        # its genre can be taken (fewer than it asks, among what is not blocked or capped).
        assert "cannot meet rules.quota at least" in str(e) and "with genres 'B'" in str(e)
        need = next(q["at_least"] for q in quotas if "at_least" in q)
        blocked = {int(i) for i in cfg["rules"].get("block", [])}
        row = int(str(e).split("row ")[1].split(":")[0])
        b_items = {int(i) for i in cand[row] if "B" in genre_sets[int(i) - 1]} - blocked
        b_pinned = sum("B" in genre_sets[i - 1] for i in pins)
        free = k - len(pins)
        assert (
            b_pinned + min(free, len(b_items - set(pins))) < need
            or budget is not None
            or any("at_most" in q for q in quotas)
        )
        return
    blocked = {int(i) for i in cfg["rules"].get("block", [])}
    for row in items:
        real = [int(i) for i in row if i]
        assert len(real) == len(set(real))
        assert not blocked & set(real)
        for item, rank in pins.items():
            assert row[rank - 1] == item
        for q in quotas:
            if "at_most" in q:
                assert sum("A" in genre_sets[i - 1] for i in real) <= q["at_most"]
            else:
                assert sum("B" in genre_sets[i - 1] for i in real) >= q["at_least"]
    if budget is not None:
        shown = np.bincount(items.ravel(), minlength=feats.num_items + 1)
        for item in pins:
            shown[item] = 0
        shown[0] = 0
        assert (shown <= start.numpy()).all()
        assert (start.numpy() - shown == budget.numpy()).all()


# -- the configuration ---------------------------------------------------------------


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "rerank.toml"
    path.write_text(
        'candidates = 50\n[diversity]\nmethod = "mmr"\nlambda = 0.7\nsimilarity = "genres"\n'
        '[exposure]\nmax_share = 0.05\n[rules]\nblock = ["50", "181"]\n'
        '[[rules.quota]]\nfield = "genres"\nvalue = "Horror"\nat_most = 2\n'
        "[rules.boost]\nnewer_than = 1998-01-01\n"
    )
    cfg = RerankConfig.load(path)
    assert cfg.candidates == 50 and cfg.diversity.lambda_ == 0.7
    assert cfg.exposure.mode == "max_share" and cfg.rules.block == ["50", "181"]
    assert cfg.rules.boost.newer_than == date(1998, 1, 1)
    assert RerankConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["rerank.diversity.lambda"] == 0.7
    assert cfg.with_overrides({"diversity.lambda": "0.5"}).diversity.lambda_ == 0.5
    bad = {
        "diversity.lamda = 1": "unknown key 'diversity.lamda'",
        "lambda_ = 1": "unknown key 'lambda_'",
        "candidates = 0": "candidates = 0: expected at least 1",
        "diversity.lambda = 1.5": r"diversity.lambda = 1.5: expected 0 <= lambda <= 1",
        'diversity.method = "x"': r"diversity.method = 'x': expected one of \('mmr'",
        "exposure.max_share = 0": "expected 0 < share <= 1",
        'exposure.mode = "max_share"': "needs exposure.max_share",
        "rules.pin = { a = 0 }": "a rank starts at 1",
        "rules.block = 5": "expected a list of item IDs",
        "candidates = 'ten'": "candidates = 'ten': expected a whole number",
    }
    for text, message in bad.items():
        key, _, value = text.partition(" = ")
        *parents, last = key.split(".")
        toml = (f"[{'.'.join(parents)}]\n" if parents else "") + f"{last} = {value}\n"
        (tmp_path / "bad.toml").write_text(toml)
        with pytest.raises(ValueError, match=message):
            RerankConfig.load(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("candidates = [")
    with pytest.raises(ValueError, match="is not valid TOML"):
        RerankConfig.load(tmp_path / "broken.toml")
    with pytest.raises(ValueError, match="is missing; expected a TOML file"):
        RerankConfig.load(tmp_path / "nope.toml")


def test_plan_checks_the_items():
    feats = features(FOUR)
    with pytest.raises(ValueError, match=r"rules.block: unknown item ID\(s\) \['9'\]"):
        compile_plan(RerankConfig.from_dict({"rules": {"block": ["9"]}}), feats)
    with pytest.raises(ValueError, match="genre 'C' is unknown"):
        compile_plan(
            RerankConfig.from_dict(
                {"rules": {"quota": [{"field": "genres", "value": "C", "at_most": 1}]}}
            ),
            feats,
        )
    with pytest.raises(ValueError, match=r"rules\.boost needs release dates"):
        compile_plan(
            RerankConfig.from_dict({"rules": {"boost": {"newer_than": "2000-01-01"}}}), feats
        )
    no_genres = ItemFeatures(feats.item_ids, (), None, feats.vectors, None)
    with pytest.raises(ValueError, match="calibration' needs genres"):
        compile_plan(
            RerankConfig.from_dict({"diversity": {"method": "calibration", "lambda": 0.5}}),
            no_genres,
        )
    plan = compile_plan(RerankConfig.from_dict({"diversity": {"lambda": 0.5}}), no_genres)
    assert plan.similarity == "embeddings"
    plan = compile_plan(RerankConfig.from_dict({"rules": {"pin": {"1": 4}}}), feats)
    with pytest.raises(ValueError, match="puts item '1' at rank 4, but lists have 3 slots"):
        plan.check_k(3)


def test_mmr_counts_a_negative_cosine_as_less_redundant_than_none():
    # Item 3 points away from item 1, item 2 is orthogonal: MMR takes 3 second.
    ids = np.array(["", "1", "2", "3"], dtype=object)
    vecs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    feats = ItemFeatures(ids, (), None, vecs, None)
    cfg = {"diversity": {"method": "mmr", "lambda": 0.5, "similarity": "embeddings"}}
    assert run(cfg, feats, [[1, 2, 3]], [[1.0, 1.0, 1.0]], 2)[0] == [[1, 3]]


def test_merit_counts_an_item_once_per_user_and_skips_pins():
    m = merit(torch.tensor([[1, 2, 1]]), torch.zeros(1, 3), 3)
    assert m.tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0])
    m = merit(torch.tensor([[1, 2, 3]]), torch.zeros(1, 3), 3, skip=torch.tensor([3]))
    assert m.tolist() == pytest.approx([0.0, 0.5, 0.5, 0.0])


def test_a_quota_the_exposure_caps_starve_names_the_caps():
    # One item of genre A, in at most ceil(0.5 x 4) = 2 lists: the third user cannot have one.
    feats = features([{"A"}, {"B"}, {"B"}, {"B"}])
    cfg = {"exposure": {"max_share": 0.5},
           "rules": {"quota": [{"field": "genres", "value": "A", "at_least": 1}]}}  # fmt: skip
    plan = compile_plan(RerankConfig.from_dict(cfg), feats)
    budget = caps(plan.cfg.exposure, 4, 2, 4)
    with pytest.raises(ValueError, match=r"row 2: cannot meet .* reached their exposure cap"):
        allocate(plan, torch.tensor([[1, 2, 3, 4]] * 4), torch.zeros(4, 4),
                 torch.zeros(4, 1, dtype=torch.long), 2, budget)  # fmt: skip


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"exposure": {}}, "give max_share"),
        ({"rules": {"boost": {"newer_than": "2000-01-01", "by": float("inf")}}}, "a finite"),
        ({"diversity": {"lambda": float("nan")}}, "expected 0 <= lambda <= 1"),
        ({"diversity": {"penalty": "min"}}, r"expected one of \('max', 'mean'\)"),
    ],
)
def test_impossible_values_are_refused(doc, message):
    with pytest.raises(ValueError, match=message):
        RerankConfig.from_dict(doc)
