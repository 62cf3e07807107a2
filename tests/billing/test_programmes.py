"""Several programmes stacked by the engine (docs/POLICY.md#programmes): the pure combination
(billing/policy.py `stack_offers`), the loader's keys, and whole reconciliations with a county
programme beside the Jiaxing one — every figure computed by hand (¥1 = 100 fen)."""

from __future__ import annotations

import dataclasses
from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import config
from billing.ledger import verify
from billing.policy import Offer, PolicyError, compute_claim, programme_covers, stack_offers
from billing.policy_file import Programmes, load_policy, load_programmes, parse_policy
from tests.billing.test_v2_rules import get_claim as get
from tests.billing.test_v2_rules import run
from tests.factories import claim, invoice, make_uscc, setup_programme, usage

EXAMPLES = Path(config.__file__).parent / "policies" / "examples"
JX = date(2025, 5, 13)  # the Jiaxing plan's effective_from
TX = date(2026, 1, 1)   # the county programme's


def offer(pid, stacking, alone, spend=0, limit=None, since=TX):
    return Offer(pid, stacking, since, alone, spend, None if limit is None else Fraction(limit))


# --- the pure combination ---------------------------------------------------------------------

def test_highest_not_both_pays_the_highest_programme_alone():
    # Spend ¥100,000: Jiaxing 50 % = ¥50,000, the county 60 % = ¥60,000 → the county pays ¥60,000.
    paid = stack_offers([offer("jx", "highest_not_both", 5_000_000, since=JX),
                         offer("tx", "highest_not_both", 6_000_000)])
    assert paid == {"jx": 0, "tx": 6_000_000}


def test_highest_not_both_tie_goes_to_the_earliest_effective_from():
    # Both ¥50,000: Jiaxing (2025-05-13) came first and pays; given in either order.
    offers = [offer("tx", "highest_not_both", 5_000_000), offer("jx", "highest_not_both", 5_000_000, since=JX)]
    assert stack_offers(offers) == stack_offers(offers[::-1]) == {"jx": 5_000_000, "tx": 0}


def test_stack_tops_up_to_the_stack_limit_of_the_spend():
    # Spend ¥100,000: Jiaxing ¥50,000; the county 30 % = ¥30,000 stacked up to 70 % of the
    # spend (¥70,000) → it adds ¥20,000, total ¥70,000.
    paid = stack_offers([offer("jx", "highest_not_both", 5_000_000, since=JX),
                         offer("tx", "stack", 3_000_000, spend=10_000_000, limit="0.7")])
    assert paid == {"jx": 5_000_000, "tx": 2_000_000}


def test_stack_pays_its_whole_amount_when_the_other_programme_is_capped():
    # Jiaxing has ¥10,000 of its cap left (alone ¥10,000): the county's ¥30,000 fits under
    # ¥70,000 − ¥10,000 = ¥60,000 → total ¥40,000.
    paid = stack_offers([offer("jx", "highest_not_both", 1_000_000, since=JX),
                         offer("tx", "stack", 3_000_000, spend=10_000_000, limit="0.7")])
    assert paid == {"jx": 1_000_000, "tx": 3_000_000}


def test_a_later_stack_programme_keeps_within_the_earlier_ones_limit():
    # Spend ¥100,000: Jiaxing ¥50,000; county A (2026-01-01) 10 % = ¥10,000 within 60 %; county B
    # (2026-06-01) 30 % within 90 % — but A paid under a 60 % limit, so B adds nothing.
    paid = stack_offers([offer("jx", "highest_not_both", 5_000_000, since=JX),
                         offer("a", "stack", 1_000_000, spend=10_000_000, limit="0.6"),
                         offer("b", "stack", 3_000_000, spend=10_000_000, limit="0.9", since=date(2026, 6, 1))])
    assert paid == {"jx": 5_000_000, "a": 1_000_000, "b": 0}


def test_stack_limit_is_never_exceeded_by_rounding():
    # Spend ¥0.03 (3 fen), limit 0.7 → 2.1 fen: the total stays within 2 fen.
    paid = stack_offers([offer("jx", "highest_not_both", 2, since=JX),
                         offer("tx", "stack", 1, spend=3, limit="0.7")])
    assert paid == {"jx": 2, "tx": 0}


def test_exclusive_pays_alone_when_it_is_the_better_outcome():
    # Spend ¥100,000: Jiaxing ¥50,000 + the county's stack ¥20,000 = ¥70,000 together;
    # an exclusive programme of 80 % = ¥80,000 is better → it alone pays ¥80,000.
    offers = [offer("jx", "highest_not_both", 5_000_000, since=JX),
              offer("tx", "stack", 3_000_000, spend=10_000_000, limit="0.7"),
              offer("hn", "exclusive", 8_000_000)]
    assert stack_offers(offers) == {"jx": 0, "tx": 0, "hn": 8_000_000}


def test_exclusive_pays_nothing_when_the_others_together_give_more():
    # The exclusive programme's 60 % = ¥60,000 < ¥70,000 the others pay together.
    offers = [offer("jx", "highest_not_both", 5_000_000, since=JX),
              offer("tx", "stack", 3_000_000, spend=10_000_000, limit="0.7"),
              offer("hn", "exclusive", 6_000_000)]
    assert stack_offers(offers) == {"jx": 5_000_000, "tx": 2_000_000, "hn": 0}


def test_exclusive_tie_goes_to_the_earliest_effective_from():
    # ¥50,000 each: Jiaxing (2025) is earlier than the exclusive programme (2026) → Jiaxing pays.
    offers = [offer("jx", "highest_not_both", 5_000_000, since=JX), offer("hn", "exclusive", 5_000_000)]
    assert stack_offers(offers) == {"jx": 5_000_000, "hn": 0}


def test_programme_covers_by_county_and_enterprise_list():
    tx = load_policy(EXAMPLES / "tongxiang-2026.toml")
    assert programme_covers(tx, "桐乡市", "X") and not programme_covers(tx, "南湖区", "X")
    assert not programme_covers(tx, None, "X")
    listed = dataclasses.replace(tx, enterprises=("A",))
    assert programme_covers(listed, "桐乡市", "A") and not programme_covers(listed, "桐乡市", "B")
    assert programme_covers(load_policy(), None, "X")  # no counties: every county


amounts = st.integers(min_value=0, max_value=10**9)
rules = st.sampled_from(["highest_not_both", "stack", "exclusive"])
limits = st.sampled_from([Fraction(1, 2), Fraction(7, 10), Fraction(1), Fraction(1, 3)])
days = st.dates(min_value=date(2025, 1, 1), max_value=date(2027, 12, 31))


@st.composite
def offer_lists(draw):
    n = draw(st.integers(min_value=1, max_value=5))
    out = []
    for i in range(n):
        rule = draw(rules)
        spend = draw(amounts)
        out.append(Offer(f"p{i}", rule, draw(days), draw(st.integers(0, spend)), spend,
                         draw(limits) if rule == "stack" else None))
    return out


@given(offer_lists())
def test_combined_payment_never_exceeds_what_the_rules_allow(offers):
    paid = stack_offers(offers)
    assert set(paid) == {o.programme_id for o in offers}
    assert all(0 <= paid[o.programme_id] <= o.alone for o in offers)
    total = sum(paid.values())
    exclusive = [o for o in offers if o.stacking == "exclusive"]
    highest = [o for o in offers if o.stacking == "highest_not_both"]
    stacked = [o for o in offers if o.stacking == "stack"]
    # At most the best admissible outcome: one exclusive alone, or one 就高 plus the stacks.
    assert total <= max([o.alone for o in exclusive]
                        + [max([o.alone for o in highest], default=0) + sum(o.alone for o in stacked)])
    payers = [o for o in offers if paid[o.programme_id] > 0]
    if any(o.stacking == "exclusive" for o in payers):
        assert len(payers) == 1  # an exclusive programme pays alone
    assert sum(1 for o in payers if o.stacking == "highest_not_both") <= 1  # 就高: never both
    for o in payers:
        if o.stacking == "stack":  # a stack programme pays only with the total within its limit
            assert total <= (o.spend * o.stack_limit.numerator) // o.stack_limit.denominator


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(-10**9, 10**9), st.integers(0, 10**8))
def test_a_single_programme_pays_what_the_existing_engine_computes(base, other, remaining, held):
    policy = load_policy()
    alone = compute_claim(policy, [base], [other], remaining + held, held=min(held, base)).payable
    assert stack_offers([Offer(policy.id, policy.stacking, policy.effective_from, alone, base)]) == {policy.id: alone}


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.lists(st.tuples(rules, limits, days), max_size=4))
def test_programmes_that_pay_nothing_leave_the_default_programme_as_it_was(alone, spend, others):
    # The default programme (Jiaxing: 就高不重复) beside programmes that offer nothing — outside
    # their window, county or budget — pays exactly what it pays alone.
    policy = load_policy()
    offers = [Offer(policy.id, policy.stacking, policy.effective_from, alone, spend)]
    offers += [Offer(f"o{i}", rule, since, 0, spend, limit if rule == "stack" else None)
               for i, (rule, limit, since) in enumerate(others)]
    assert stack_offers(offers)[policy.id] == alone


# --- policy files ------------------------------------------------------------------------------

def test_default_is_the_jiaxing_file_alone():
    programmes = load_programmes()
    assert programmes.default == load_policy() and programmes.others == ()
    assert programmes.default.programme == "default"  # its quota's key, whatever its id


def test_a_policies_dir_adds_its_programmes_beside_the_default(tmp_path):
    programmes = load_programmes(EXAMPLES)
    assert [p.id for p in programmes.all] == ["jiaxing-ai-plus-2025", "tongxiang-compute-2026"]
    tx = programmes.get("tongxiang-compute-2026")
    assert (tx.stacking, tx.stack_limit, tx.counties, tx.rate) == ("stack", Fraction(7, 10), ("桐乡市",), Fraction(3, 10))
    assert tx.programme == "tongxiang-compute-2026"
    # The default file in the directory too is the default itself, not a second programme.
    (tmp_path / "jx.toml").write_bytes((Path(config.__file__).parent / "policies" / "jiaxing-2025.toml").read_bytes())
    assert load_programmes(tmp_path).others == ()


def test_two_files_with_one_id_are_refused(tmp_path):
    text = (EXAMPLES / "tongxiang-2026.toml").read_text(encoding="utf-8")
    (tmp_path / "a.toml").write_text(text, encoding="utf-8")
    (tmp_path / "b.toml").write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match="already the id of another file"):
        load_programmes(tmp_path)
    with pytest.raises(PolicyError, match="not a directory"):
        load_programmes(tmp_path / "none")


def _tongxiang(**changes):
    import tomllib

    data = tomllib.loads((EXAMPLES / "tongxiang-2026.toml").read_text(encoding="utf-8"))
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, key, words", [
    ({"stack_limit": 0.7}, "stack_limit", "not a float"),
    ({"stack_limit": "1.5"}, "stack_limit", "<= 1"),
    ({"stacking": "exclusive"}, "stack_limit", 'only with stacking = "stack"'),
    ({"counties": []}, "counties", "non-empty list"),
    ({"counties": ["桐乡市", "桐乡市"]}, "counties", "repeat"),
    ({"enterprises": ["not-a-uscc"]}, "enterprises[0]", "not a valid USCC"),
    ({"stacking": "both"}, "stacking", "must be one of"),
    ({"county": ["桐乡市"]}, "county", "unknown key"),
])
def test_new_keys_are_checked_and_named(changes, key, words):
    with pytest.raises(PolicyError) as err:
        parse_policy(_tongxiang(**changes))
    assert err.value.key == key and words in err.value.message


def test_stack_needs_its_limit():
    data = _tongxiang()
    del data["stack_limit"]
    with pytest.raises(PolicyError) as err:
        parse_policy(data)
    assert err.value.key == "stack_limit" and "missing" in err.value.message


# --- whole reconciliations ---------------------------------------------------------------------

SPEND = 10_000_000  # ¥100,000 in October 2026


@pytest.fixture
def w(finance, as_key, app):
    """Two enterprises in 桐乡市 and one in 南湖区; the Jiaxing programme and the example county
    programme (30 % stacked up to 70 %, caps ¥500,000, budget ¥5,000,000) run together."""
    _, tx = setup_programme(finance, providers=("prov-a",), enterprises=2, county="桐乡市")
    r = finance.post("/v1/enterprises", json={"uscc": make_uscc(900), "name": "南湖",
                                              "county": "南湖区", "eligible": True})
    assert r.status_code == 201, r.json
    default = app.extensions["voucher.policy"]
    county = load_policy(EXAMPLES / "tongxiang-2026.toml")

    def programmes(*others):
        app.extensions["voucher.programmes"] = Programmes(default, tuple(others))

    programmes(county)
    return {"finance": finance, "usccs": [*tx, r.json["uscc"]], "a": as_key("provider", "prov-a"),
            "e": [as_key("enterprise", u) for u in [*tx, r.json["uscc"]]], "app": app,
            "county": county, "programmes": programmes}


def spend(w, n, paid=SPEND, period="2026-10", others=()):
    u = w["usccs"][n]
    usage(w["a"], u, paid, period=period)
    invoice(w["a"], f"A-{n}-{period}", u, paid, period=period)
    return claim(w["e"][n], [("prov-a", f"A-{n}-{period}", paid)], period=period, others=others)


def figures(c):
    return {p["programme_id"]: p for p in c.get("programmes", [])}


def quota(w, n, program=None):
    q = f"&program={program}" if program else ""
    return w["finance"].get(f"/v1/enterprises/{w['usccs'][n]}/quota?year=2026{q}").json


def ledger_ok(w):
    with w["app"].extensions["voucher.db"].session() as s:
        assert verify(s).ok, verify(s).breaches


def test_stack_reconciled_reserved_approved_per_programme(w):
    cid = spend(w, 0)
    run(w)
    c = get(w, cid)
    # Jiaxing ¥50,000; the county ¥30,000 alone, ¥20,000 within 70 % of ¥100,000.
    assert (c["status"], c["payable"]) == ("verified", 5_000_000)
    assert figures(c)["tongxiang-compute-2026"] == {
        "programme_id": "tongxiang-compute-2026", "base": SPEND, "computed": 3_000_000, "alone": 3_000_000,
        "payable": 2_000_000, "clawed_back": 0, "cap_reached": False, "discrepancies": []}
    assert quota(w, 0)["reserved"] == 5_000_000
    assert quota(w, 0, "tongxiang-compute-2026") | {"reserved": 2_000_000, "cap": 50_000_000} == quota(
        w, 0, "tongxiang-compute-2026")
    run(w)  # a re-run moves nothing
    assert get(w, cid) | {"reconciled_at": None} == c | {"reconciled_at": None}
    assert w["finance"].post(f"/v1/claims/{cid}/approve", json={}).status_code == 200
    assert (quota(w, 0)["granted"], quota(w, 0, "tongxiang-compute-2026")["granted"]) == (5_000_000, 2_000_000)
    ledger_ok(w)


def test_cap_binding_in_the_county_programme_only(w):
    w["programmes"](dataclasses.replace(w["county"], cap_standard=1_000_000, cap_new_model_filing=1_000_000))
    cid = spend(w, 0)
    run(w)
    c = get(w, cid)
    # The county's cap is ¥10,000: it pays ¥10,000 (cap reached); Jiaxing still ¥50,000.
    assert c["payable"] == 5_000_000 and not c["cap_reached"]
    tx = figures(c)["tongxiang-compute-2026"]
    assert (tx["alone"], tx["payable"], tx["cap_reached"]) == (1_000_000, 1_000_000, True)
    assert quota(w, 0, "tongxiang-compute-2026")["remaining"] == 0
    ledger_ok(w)


def test_budget_binding_in_the_county_programme_only(w):
    w["programmes"](dataclasses.replace(w["county"], budget_annual=2_500_000))  # ¥25,000 for everyone
    first, second = spend(w, 0), spend(w, 1)
    run(w)
    # First: ¥20,000 of the county (its ¥30,000 cut to the ¥70,000 limit); second: the ¥5,000 left.
    assert figures(get(w, first))["tongxiang-compute-2026"]["payable"] == 2_000_000
    second_tx = figures(get(w, second))["tongxiang-compute-2026"]
    assert (second_tx["alone"], second_tx["payable"], second_tx["discrepancies"]) == (500_000, 500_000, ["budget_exhausted"])
    assert get(w, second)["payable"] == 5_000_000 and get(w, second)["status"] == "verified"
    budget = w["finance"].get("/v1/budget?year=2026&program=tongxiang-compute-2026").json
    assert (budget["annual"], budget["reserved"], budget["remaining"], budget["waitlisted"]) == (2_500_000, 2_500_000, 0, 0)
    jx = w["finance"].get("/v1/budget?year=2026").json
    assert jx["annual"] is None  # Jiaxing: no budget
    # Reserved: Jiaxing ¥50,000 × 2, the county ¥25,000; Jiaxing is unlimited, so the sum is too.
    assert jx["combined"] == {"programmes": ["jiaxing-ai-plus-2025", "tongxiang-compute-2026"],
                              "annual": None, "reserved": 12_500_000, "granted": 0}
    ledger_ok(w)


def test_highest_not_both_moves_the_payment_to_the_higher_programme(w):
    w["programmes"](dataclasses.replace(w["county"], stacking="highest_not_both", stack_limit=None,
                                        rate=Fraction(6, 10), cap_standard=200_000_000,
                                        cap_new_model_filing=500_000_000))
    cid = spend(w, 0)
    run(w)
    c = get(w, cid)
    # Jiaxing ¥50,000 < the county's 60 % = ¥60,000: the county pays it all, Jiaxing nothing.
    assert c["payable"] == 0 and c["computed"] == 5_000_000
    assert figures(c)["tongxiang-compute-2026"]["payable"] == 6_000_000
    assert (quota(w, 0)["reserved"], quota(w, 0, "tongxiang-compute-2026")["reserved"]) == (0, 6_000_000)
    assert w["finance"].post(f"/v1/claims/{cid}/reject", json={"reason": "no"}).status_code == 200
    assert quota(w, 0, "tongxiang-compute-2026")["reserved"] == 0
    assert figures(get(w, cid))["tongxiang-compute-2026"]["payable"] == 0
    ledger_ok(w)


def test_exclusive_programme_wins_only_when_it_pays_more(w):
    exclusive = dataclasses.replace(w["county"], stacking="exclusive", stack_limit=None, rate=Fraction(8, 10),
                                    cap_standard=200_000_000, cap_new_model_filing=500_000_000)
    w["programmes"](exclusive)
    cid = spend(w, 0)
    run(w)
    # 80 % = ¥80,000 alone beats Jiaxing's ¥50,000: only the exclusive programme pays.
    assert get(w, cid)["payable"] == 0 and figures(get(w, cid))["tongxiang-compute-2026"]["payable"] == 8_000_000
    ledger_ok(w)


def test_an_enterprise_outside_the_county_gets_the_default_programme_only(w):
    cid = spend(w, 2)
    run(w)
    c = get(w, cid)
    assert c["payable"] == 5_000_000 and c["programmes"] == []
    assert quota(w, 2)["combined"]["programmes"] == ["jiaxing-ai-plus-2025"]


def test_declared_other_subsidies_still_count_in_each_programme(w):
    cid = spend(w, 0, others=(1_000_000,))  # ¥10,000 from a programme the service does not run
    run(w)
    c = get(w, cid)
    # Jiaxing ¥50,000 − ¥10,000 = ¥40,000; the county ¥30,000 − ¥10,000 = ¥20,000 alone, and
    # ¥40,000 + ¥20,000 = ¥60,000 is within ¥70,000: ¥20,000.
    assert c["payable"] == 4_000_000 and figures(c)["tongxiang-compute-2026"]["payable"] == 2_000_000


def test_single_programme_answers_are_unchanged_when_no_other_programme_covers(w):
    w["programmes"]()
    alone = spend(w, 0)
    run(w)
    before = get(w, alone)
    assert "programmes" not in before  # left out with one programme
    w["programmes"](dataclasses.replace(w["county"], counties=("海宁市",)))
    run(w)
    after = get(w, alone)
    assert after.pop("programmes") == [] and after | {"reconciled_at": None} == before | {"reconciled_at": None}


def test_program_parameter_and_combined_quota(w):
    spend(w, 0)
    run(w)
    r = w["finance"].get(f"/v1/enterprises/{w['usccs'][0]}/quota?program=nope")
    assert r.status_code == 404 and r.json["error"]["param"] == "program"
    r = w["finance"].get("/v1/budget?program=nope")
    assert r.status_code == 404 and r.json["error"]["param"] == "program"
    assert quota(w, 0, "jiaxing-ai-plus-2025") == quota(w, 0)
    own = w["e"][0].get(f"/v1/enterprises/{w['usccs'][0]}/quota?year=2026&program=tongxiang-compute-2026").json
    assert own == quota(w, 0, "tongxiang-compute-2026")
    assert (own["policy_id"], own["cap"], own["reserved"]) == ("tongxiang-compute-2026", 50_000_000, 2_000_000)
    # Caps ¥2,000,000 + ¥500,000; reserved ¥50,000 + ¥20,000.
    assert own["combined"] == {"programmes": ["jiaxing-ai-plus-2025", "tongxiang-compute-2026"],
                               "cap": 250_000_000, "granted": 0, "reserved": 7_000_000, "remaining": 243_000_000}
    # Another enterprise's quota stays a 404 before the programme is looked at.
    assert w["e"][1].get(f"/v1/enterprises/{w['usccs'][0]}/quota?program=nope").status_code == 404
    w["programmes"]()
    assert "combined" not in quota(w, 0)  # one programme: the answer as it always was


def test_console_quota_page_shows_each_programme_and_the_combined_figure(w, db):
    from tests.conftest import new_key
    from tests.test_console import Console

    cid = spend(w, 0)
    run(w)
    page = Console(w["app"].test_client())
    page.sign_in(new_key(db, "enterprise", w["usccs"][0]))
    detail = page.text(f"/console/claims/{cid}")
    assert '<tr data-programme="tongxiang-compute-2026">' in detail and 'data-fen="2000000"' in detail
    html = page.text(f"/console/enterprises/{w['usccs'][0]}?year=2026")
    assert 'data-programme="jiaxing-ai-plus-2025"' in html and 'data-programme="tongxiang-compute-2026"' in html
    assert "桐乡市算力券补充政策（示例）" in html and "叠加" in html
    # ¥2,500,000 of caps less ¥70,000 reserved.
    assert 'id="programme-combined" data-fen="243000000"' in html and "¥2,430,000.00" in html
    english = page.text(f"/console/enterprises/{w['usccs'][0]}?year=2026&lang=en")
    assert "Quota per programme" in english and "Tongxiang compute voucher top-up (example)" in english
    w["programmes"]()
    assert "programme-quotas" not in page.text(f"/console/enterprises/{w['usccs'][0]}?year=2026")


def test_xlsx_report_has_a_programmes_sheet_only_when_several_ran(w):
    import io

    from openpyxl import load_workbook

    from billing.reports import write_report

    spend(w, 0)
    spend(w, 2)  # 南湖区: the default programme only
    run(w)
    db, policy = w["app"].extensions["voucher.db"], w["app"].extensions["voucher.policy"]

    def workbook():
        out = io.BytesIO()
        with db.session() as s:
            write_report(s, "2026-10", "xlsx", out, policy=policy)
        return load_workbook(io.BytesIO(out.getvalue()))

    sheet = workbook()["政策 Programmes"]
    rows = [[c for c in r] for r in sheet.iter_rows(min_row=3, values_only=True)]
    by = {(r[1], r[4]): r for r in rows if r[0] != "合计 Total"}
    u0, u2 = w["usccs"][0], w["usccs"][2]
    # ¥50,000 from Jiaxing and ¥20,000 from the county for the 桐乡市 claim; ¥50,000 for 南湖区.
    assert by[(u0, "jiaxing-ai-plus-2025")][7] == 50_000 and by[(u0, "tongxiang-compute-2026")][7] == 20_000
    assert by[(u0, "tongxiang-compute-2026")][6] == 30_000 and (u2, "tongxiang-compute-2026") not in by
    assert by[(u0, "tongxiang-compute-2026")][3].endswith("verified")
    totals = {r[4]: r[7] for r in rows if r[0] == "合计 Total"}
    assert totals == {"jiaxing-ai-plus-2025": 100_000, "tongxiang-compute-2026": 20_000}


def test_xlsx_report_is_unchanged_with_one_programme(w):
    import io

    from openpyxl import load_workbook

    from billing.reports import write_report

    w["programmes"]()
    spend(w, 0)
    run(w)
    out = io.BytesIO()
    with w["app"].extensions["voucher.db"].session() as s:
        write_report(s, "2026-10", "xlsx", out, policy=w["app"].extensions["voucher.policy"])
    assert "政策 Programmes" not in load_workbook(io.BytesIO(out.getvalue())).sheetnames


def test_the_engine_runs_the_policy_combination():
    from billing import policy, reconciliation

    assert reconciliation.stack_offers is policy.stack_offers
    assert reconciliation.programme_covers is policy.programme_covers


def test_hot_quota_read_equals_the_domain_quota_for_every_programme(w):
    from api.schemas.billing import Quota
    from billing import ledger

    spend(w, 0)
    run(w)
    programmes = w["app"].extensions["voucher.programmes"]
    hot = {(p.id, n): quota(w, n, p.id) for p in programmes.all for n in (0, 1, 2)}
    with w["app"].extensions["voucher.db"].session() as s:
        for p in programmes.all:
            for n in (0, 1, 2):
                answer = dict(hot[(p.id, n)])
                answer.pop("combined")
                assert answer == Quota.dump(ledger.read_quota(s, p, w["usccs"][n], 2026)), (p.id, n)


def test_another_programme_may_not_take_the_default_key_or_the_default_id():
    default, county = load_policy(), load_policy(EXAMPLES / "tongxiang-2026.toml")
    with pytest.raises(PolicyError, match="must differ"):
        Programmes(default, (dataclasses.replace(county, id="default"),))
    with pytest.raises(PolicyError, match="must differ"):
        Programmes(default, (dataclasses.replace(county, id=default.id),))


def test_a_void_after_approval_claws_back_on_every_programme(w):
    u = w["usccs"][0]
    usage(w["a"], u, 8_000_000, rid="keep")
    usage(w["a"], u, 2_000_000, rid="later-void")
    invoice(w["a"], "A-0", u, SPEND)
    cid = claim(w["e"][0], [("prov-a", "A-0", SPEND)])
    run(w)
    assert w["finance"].post(f"/v1/claims/{cid}/approve", json={}).status_code == 200
    assert w["a"].delete("/v1/usage-records/later-void", json={"reason": "sent twice"}).status_code == 200
    run(w)
    c = get(w, cid)
    # The base is now ¥80,000: Jiaxing keeps ¥40,000 (¥10,000 clawed back); the county's 30 %
    # would be ¥24,000, more than its ¥20,000 grant, but 70 % of ¥80,000 = ¥56,000 leaves it
    # ¥16,000: ¥4,000 clawed back on its quota.
    assert (c["payable"], c["clawed_back"]) == (4_000_000, 1_000_000)
    tx = figures(c)["tongxiang-compute-2026"]
    assert (tx["payable"], tx["clawed_back"]) == (1_600_000, 400_000)
    assert (quota(w, 0)["granted"], quota(w, 0, "tongxiang-compute-2026")["granted"]) == (4_000_000, 1_600_000)
    run(w)  # nothing more
    assert figures(get(w, cid))["tongxiang-compute-2026"]["payable"] == 1_600_000
    ledger_ok(w)


def test_a_county_change_releases_what_the_county_programme_held(w):
    cid = spend(w, 0)
    run(w)
    assert quota(w, 0, "tongxiang-compute-2026")["reserved"] == 2_000_000
    r = w["finance"].patch(f"/v1/enterprises/{w['usccs'][0]}", json={"county": "南湖区"})
    assert r.status_code == 200, r.json
    run(w)
    # No longer in 桐乡市: the county programme's ¥20,000 is released; Jiaxing keeps ¥50,000.
    assert quota(w, 0, "tongxiang-compute-2026")["reserved"] == 0
    c = get(w, cid)
    assert c["payable"] == 5_000_000 and c["programmes"] == []
    ledger_ok(w)
